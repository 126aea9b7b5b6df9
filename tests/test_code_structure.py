"""The code's shape, read from the source with `ast`: module sizes, the top level of the
orchestrator, import cycles (imports inside functions included), which modules import the Ray
worker's trainable, and the documents the code names. docs/design.md describes the layout."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "trainers")
MAX_LINES = 400
MAX_TOP_LEVEL = 12
WORKER_MODULE = "orchestrator.tune.trainable"
# The one driver module that names the trainable: it hands `run_trial` to Ray Tune.
HANDS_OVER_THE_TRAINABLE = {"orchestrator.tune.runner"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(name: str, path: Path) -> set[str]:
    """The project modules `name` imports anywhere in its file (module level, inside functions
    and classes), except under `if TYPE_CHECKING:`, which never runs."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
               and _is_type_checking(block) for stmt in block.body for n in ast.walk(stmt)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in MODULES else module)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    """One import cycle of the project's modules, or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (found := visit(start)):
            return found
    return None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_the_line_limit(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)}: {lines} lines"


def test_the_orchestrator_top_level_is_small():
    top = sorted(p.name for p in (ROOT / "orchestrator").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, top


def test_no_import_cycle_counting_imports_inside_functions():
    assert _cycle() is None, " -> ".join(_cycle() or [])


def test_the_cycle_check_sees_imports_inside_functions():
    assert "orchestrator.tune.runner" in GRAPH["orchestrator.sweep"]   # imported in main()
    GRAPH["orchestrator.errors"].add("orchestrator.sweep")
    try:
        assert _cycle() is not None
    finally:
        GRAPH["orchestrator.errors"].discard("orchestrator.sweep")


def test_only_the_runner_imports_the_worker_module():
    importers = {name for name, deps in GRAPH.items() if WORKER_MODULE in deps}
    assert importers == HANDS_OVER_THE_TRAINABLE


def test_the_driver_side_modules_do_not_reach_the_worker_module():
    """Nothing the callback, the schedulers or the sinks import leads to the trainable."""
    for start in ("orchestrator.tune.callback", "orchestrator.tune.tuner",
                  "orchestrator.scheduling.arm_scheduler", "orchestrator.sinks.mlflow",
                  "orchestrator.sinks.parquet", "orchestrator.report.writer"):
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(GRAPH[node])
        assert WORKER_MODULE not in seen, start


# A document: a path (`docs/design.md`) or a capitalised name (`RESULTS.md`); lower-case bare
# names (`ablation.md`, `search.md`) are files the report writes.
_DOC = re.compile(r"[\w./-]*/[\w-]+\.md\b|\b[A-Z][A-Z_]*\.md\b")


def _tracked_files() -> list[str]:
    """The repository's files: git's list, or in a copy without git (the mutation check runs the
    suite in a `git archive` copy) every file below the root but caches and virtual envs."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    if listed.returncode == 0 and listed.stdout.strip():
        return listed.stdout.split()
    skip = {".git", "__pycache__", ".venv", "venv", ".mypy_cache", ".ruff_cache", "sweeps"}
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def test_every_document_the_code_names_is_in_the_repository():
    tracked = _tracked_files()
    names = {Path(t).name for t in tracked}
    sources = [ROOT / t for t in tracked if t.endswith((".py", ".toml", ".yaml", ".yml"))
               or t == ".ci/run"]
    missing = []
    for path in sources:
        for doc in set(_DOC.findall(path.read_text())):
            here = [ROOT / doc, path.parent / doc]
            if not any(p.is_file() for p in here) and ("/" in doc or Path(doc).name not in names):
                missing.append(f"{path.relative_to(ROOT)}: {doc}")
    assert not missing, missing
