"""The lock (constraints.txt) that the README's install commands and .ci/run install with: it pins
every package the project and its tests need, each pin meets pyproject.toml's range, and the
environment the tests run in is the locked one (a package that floats turns a fresh machine's CI
red while an older machine stays green)."""

import importlib.metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
REFRESH = "uv pip compile pyproject.toml --extra test --python-version 3.11 --universal"


def _pins() -> dict[str, str]:
    """Package -> locked version, for this interpreter and platform (markers evaluated)."""
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        (spec,) = req.specifier                     # exactly one `==` per locked line
        assert spec.operator == "==", line
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def _declared() -> list[Requirement]:
    """pyproject.toml's dependencies and its `test` extra, as the installed project declares
    them."""
    return [Requirement(r) for r in importlib.metadata.requires("localvit-sweeps") or ()]


def test_the_lock_says_how_it_is_refreshed():
    assert REFRESH in (ROOT / "constraints.txt").read_text()
    assert "constraints.txt" in (ROOT / ".ci" / "run").read_text()


def test_every_declared_dependency_is_locked_within_its_range():
    pins = _pins()
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt: refresh it ({REFRESH})"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt locks {req.name}=={pins[name]}, outside pyproject.toml's "
            f"'{req.specifier}': refresh it ({REFRESH})")


def test_the_installed_packages_are_the_locked_ones():
    # Every locked package that is installed, transitive ones included (pydantic-core floated
    # with pydantic), has its locked version.
    wrong = []
    for name, version in sorted(_pins().items()):
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue                    # locked for an extra or a platform this one lacks
        if installed != version:
            wrong.append(f"{name} {installed} (locked: {version})")
    assert not wrong, ("installed without the lock: " + ", ".join(wrong)
                       + "; install with pip install -c constraints.txt -e '.[test]'")
