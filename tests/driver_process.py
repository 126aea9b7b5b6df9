"""A sweep driver as a real `python -m orchestrator.sweep` process, for the tests that signal,
kill or starve it: started in its own process group with its output in a log file, watched
through that log, and killed with its whole group when a test ends early."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start(args: list[str], log: Path, env: Mapping[str, str] | None = None,
          fault: str | None = None) -> subprocess.Popen:
    """`python -m orchestrator.sweep ARGS` from the project root, stdout and stderr to `log`;
    with `fault`, through tests/tune_faults.py, which injects it at its point of Tune's work."""
    env = {**(env if env is not None else os.environ), "RAY_USAGE_STATS_ENABLED": "0"}
    entry = (["-m", "orchestrator.sweep"] if fault is None
             else [str(ROOT / "tests" / "tune_faults.py"), fault, "--"])
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, *entry, *args], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for(proc: subprocess.Popen, log: Path, seen: str | Callable[[str], bool],
             timeout: float = 240) -> None:
    """Until the log has the line `seen` (or `seen(text)` holds); fails if the driver exits
    first or the time runs out."""
    check = seen if callable(seen) else (lambda text: seen in text)
    deadline = time.monotonic() + timeout
    while not check(log.read_text()):
        assert proc.poll() is None, f"the driver exited first:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not seen within {timeout:.0f} s: {seen!r}"
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's process group if it still runs (a test that failed midway)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
