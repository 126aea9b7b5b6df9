"""The machinery of benchmarks/mutations.py: copy the repository, apply one break, run the suite.

Each copy holds either the working tree's tracked files or a commit (`git archive`); the test
command runs inside the copy with the copy first on PYTHONPATH (checked before each run, since the
project is installed in editable mode pointing at the original checkout), in its own process
group so that a timeout or Ctrl-C stops everything it started.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- mutations:begin -->", "<!-- mutations:end -->"
TEST_COMMAND = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
NO_TESTS_COLLECTED = 5  # pytest's exit code


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str       # relative to the repository root
    find: str       # must occur exactly once in the file
    replace: str
    what: str       # the break, in words
    # Why a survivor is acceptable for now ("" = it must be killed).
    pending: str = ""
    # Test files to run before the rest of the suite (the ones meant to catch this break): the
    # two runs together are the whole suite, but a kill there takes seconds, not minutes.
    first: tuple[str, ...] = ()


class StaleMutation(RuntimeError):
    pass


def check(m: Mutation, text: str | None) -> None:
    """`text` is the content of `m.path` (None: the file does not exist)."""
    if text is None:
        raise StaleMutation(f"{m.name}: {m.path} does not exist")
    n = text.count(m.find)
    if n != 1:
        raise StaleMutation(f"{m.name}: find string occurs {n} times in {m.path} (must be once); "
                            f"update it in benchmarks/mutations.py:\n    {m.find!r}")


@dataclass(frozen=True)
class Source:
    """What each copy holds: the working tree's tracked files, or a commit (`rev`)."""

    files: tuple[str, ...] = ()
    archive: bytes = b""        # `git archive` of `rev`

    @classmethod
    def working_tree(cls, untracked: bool) -> Source:
        args = ["git", "ls-files", "-z", "--cached"] + (["--others", "--exclude-standard"]
                                                        if untracked else [])
        out = subprocess.run(args, cwd=ROOT, capture_output=True, check=True).stdout
        return cls(files=tuple(sorted({f for f in out.decode().split("\0")
                                       if f and (ROOT / f).is_file()})))

    @classmethod
    def commit(cls, rev: str) -> Source:
        out = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT,
                             capture_output=True, check=True).stdout
        return cls(archive=out)

    def read(self, rel: str) -> str | None:
        if self.archive:
            with tarfile.open(fileobj=io.BytesIO(self.archive)) as tar:
                try:
                    member = tar.extractfile(rel)
                except KeyError:
                    return None
                return member.read().decode() if member else None
        return (ROOT / rel).read_text() if rel in self.files else None

    def copy(self) -> Path:
        dest = Path(tempfile.mkdtemp(prefix="mutant-"))
        if self.archive:
            with tarfile.open(fileobj=io.BytesIO(self.archive)) as tar:
                tar.extractall(dest, filter="data")
        for rel in self.files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, target)
        return dest


# Suite runs in flight, so that Ctrl-C / SIGTERM can stop them with everything they started
# (Ray starts its own processes): each runs in its own process group.
_RUNNING: set[subprocess.Popen] = set()
_LOCK = threading.Lock()


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_suite(cmd: list[str], copy: Path, timeout: float) -> tuple[int | None, str]:
    """(return code or None on timeout, stdout) of the test command in `copy`."""
    proc = subprocess.Popen(cmd, cwd=copy, env=env_for(copy), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    with _LOCK:
        _RUNNING.add(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return None, ""
    finally:
        _kill_group(proc)   # Ray's processes may outlive a finished pytest
        with _LOCK:
            _RUNNING.discard(proc)


def stop_all() -> None:
    with _LOCK:
        running = list(_RUNNING)
    for proc in running:
        _kill_group(proc)


def env_for(copy: Path) -> dict[str, str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(copy)] + ([env["PYTHONPATH"]]
                                                      if env.get("PYTHONPATH") else []))
    return env


def check_imports_from(copy: Path) -> None:
    """The editable install points at this checkout; make sure the copy's packages win."""
    code = "import trainers, orchestrator; print(trainers.__file__); print(orchestrator.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env_for(copy),
                         capture_output=True, text=True, timeout=300, check=False)
    paths = out.stdout.split()
    if out.returncode != 0 or len(paths) != 2 or not all(
            Path(p).resolve().is_relative_to(copy.resolve()) for p in paths):
        raise RuntimeError(f"the copy in {copy} does not import its own code: {out.stdout}"
                           f"{out.stderr[-2000:]}")


@dataclass
class Outcome:
    name: str
    status: str        # killed / survived / timeout / baseline-failed
    seconds: float
    by: str            # the first failing test, or the end of pytest's output
    output: str = ""   # pytest's output (kept for a failed baseline)


_FAILED = re.compile(r"^(FAILED|ERROR) (\S+)", re.MULTILINE)


def _stages(m: Mutation | None, tests: list[str], deselect: list[str]) -> list[list[str]]:
    """pytest arguments of each run; together they cover `tests` (default: the whole suite)."""
    common = [f"--deselect={node}" for node in deselect]
    if tests or m is None or not m.first:
        return [tests + common]
    return [list(m.first) + common, [f"--ignore={path}" for path in m.first] + common]


def run_one(m: Mutation | None, source: Source, tests: list[str], deselect: list[str],
            timeout: float, keep: bool) -> Outcome:
    copy = source.copy()
    name = m.name if m else "baseline"
    try:
        if m is not None:
            path = copy / m.path
            text = path.read_text()
            check(m, text)
            path.write_text(text.replace(m.find, m.replace))
        check_imports_from(copy)
        start = time.monotonic()
        for stage in _stages(m, tests, deselect):
            code, out = run_suite(TEST_COMMAND + stage, copy, timeout)
            if code == NO_TESTS_COLLECTED:
                code = 0
            if code != 0:
                break
        seconds = time.monotonic() - start
        if code is None:
            return Outcome(name, "timeout", seconds, f"over {timeout:.0f} s")
        hit = _FAILED.search(out)
        tail = (out.strip().splitlines() or ["(no output)"])[-1]
        by = hit.group(2) if hit else tail
        if m is None:
            return Outcome(name, "passed" if code == 0 else "baseline-failed", seconds, by,
                           output=out)
        return Outcome(name, "survived" if code == 0 else "killed", seconds, by)
    finally:
        if keep:
            print(f"  kept {name} in {copy}", file=sys.stderr)
        else:
            shutil.rmtree(copy, ignore_errors=True)


def table(outcomes: list[Outcome], by_name: dict[str, Mutation]) -> str:
    rows = ["| mutation | file | break | result | s | first failing test / note |",
            "|---|---|---|---|---|---|"]
    for o in outcomes:
        m = by_name[o.name]
        note = o.by if o.status != "survived" else (m.pending or "NOT CAUGHT")
        rows.append(f"| `{m.name}` | `{m.path}` | {m.what} | **{o.status}** | "
                    f"{o.seconds:.0f} | {note} |")
    return "\n".join(rows)


def record(outcomes: list[Outcome], by_name: dict[str, Mutation], wall: float,
           rev: str | None, deselected: list[str]) -> None:
    """Write the result table into RESULTS.md between the mutation markers."""
    killed = sum(o.status in ("killed", "timeout") for o in outcomes)
    survivors = [o for o in outcomes if o.status == "survived"]
    commit = subprocess.run(["git", "rev-parse", "--short", rev or "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.strip()
    where = f"commit {commit}" if rev else f"the working tree at commit {commit}"
    load = os.getloadavg()[0]
    scope = ("all mutations" if len(outcomes) == len(by_name)
             else f"{len(outcomes)} of {len(by_name)} mutations")
    lines = [
        BEGIN,
        "## Mutation check: breaks the test suite must catch",
        "",
        f"Recorded {dt.datetime.now():%Y-%m-%d %H:%M} on {where} by "
        f"`python benchmarks/mutations.py --record"
        + (f" --rev {rev}" if rev else "") + f"` ({scope}, {wall / 60:.0f} min wall, "
        f"1-minute load average {load:.1f} at the end, 2 cores). Each break is applied to a copy "
        "of the tracked files and the default test command runs there until its first failure "
        "(`pytest -q -x`). **killed** = the suite failed; **survived** = it passed."
        + (f" Left out because they failed without any mutation: "
           f"{', '.join(f'`{d}`' for d in deselected)}." if deselected else ""),
        "",
        f"**{killed} of {len(outcomes)} killed**"
        + (f"; survivors: {', '.join(f'`{o.name}`' for o in survivors)}." if survivors else "."),
        "",
        table(outcomes, by_name),
        "",
        "Any survivor is a gap in the tests unless its note says why the break is harmless.",
        END,
    ]
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = "\n".join(lines)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)
    print(f"recorded in {RESULTS}")
