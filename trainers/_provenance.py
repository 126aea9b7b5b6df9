"""Where a result came from: library versions and the git commit of the code that ran.

Recorded beside every result (a training run's config.yaml; a sweep's trials.parquet, MLflow
parent run and spec.yaml, through orchestrator._provenance) so that a number can be traced back
to the code that produced it. Versions come from package metadata, so asking
for them never imports torch or ray.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import TypedDict

__all__ = ["TRACKED_PACKAGES", "Provenance", "git_commit", "provenance", "versions"]

# The libraries whose versions decide a result; `python` is the interpreter itself.
TRACKED_PACKAGES = ("torch", "timm", "ray", "mlflow", "optuna")


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """`{"python": "3.11.7", "torch": "2.14.1", ...}`; None for a package that is not installed."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=8)
def git_commit(cwd: str | None = None) -> str | None:
    """The commit checked out in `cwd` (default: where this package's code lives, which is what
    ran, wherever the command was started from); None outside a repo (e.g. a wheel install).

    A working tree with uncommitted changes gets a `-dirty` suffix, because the commit alone
    would then claim code that did not run.
    """
    where = cwd or str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        commit = head.stdout.strip()
        # Tracked files only: untracked outputs (sweeps/, reports) do not make the code dirty.
        diff = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if diff.returncode == 0 and diff.stdout.strip():
        commit += "-dirty"
    return commit or None


class Provenance(TypedDict):
    versions: dict[str, str | None]
    git_commit: str | None


def provenance(cwd: str | None = None) -> Provenance:
    """`{"versions": {...}, "git_commit": "abc123..." | None}`."""
    return {"versions": dict(versions()), "git_commit": git_commit(cwd)}
