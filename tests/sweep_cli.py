"""The sweep command run in-process, for the system tests that grow a study or add seeds: its exit
code and captured output, and a sweep's trials table by trial key."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pandas as pd

from orchestrator.sinks.parquet import read_trials
from orchestrator.sweep import main


def run(*args: object) -> tuple[int, str]:
    """main(args) with its output captured: (exit code, stdout and stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
        code = main([str(a) for a in args])
    return code, out.getvalue()


def rows(sweep: Path) -> pd.DataFrame:
    """trials.parquet by trial key, the config as stored."""
    return read_trials(sweep, decode_config=False).set_index("trial_key").sort_index()
