"""What a restarted driver (`--resume`) keeps: Tune's saved state when it is whole, else the
finished trials of the Parquet tables (the system of record), which the sinks are told about.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.errors import ResumeError
from orchestrator.plan.model import Plan
from orchestrator.sinks.base import FinishedTrial
from orchestrator.sinks.parquet import TRIALS_FILE, read_trials, table_exists
from orchestrator.tune.grow import finished_keys
from orchestrator.tune.state import set_aside_damaged_sessions
from orchestrator.tune.storage import tune_experiment_dir

__all__ = ["finished_trials", "rerun_without_tune_state", "set_aside_damaged_state"]


def set_aside_damaged_state(plan: Plan) -> bool:
    """Tune's newest saved session cut short (a disk that filled up while Tune copied it)? Set
    it aside (`*.damaged`) so that Tune restores an older whole one if there is one. Whether
    anything was set aside."""
    return set_aside_damaged_sessions(tune_experiment_dir(plan))


def rerun_without_tune_state(plan: Plan, target: Path,
                              notify: Callable[[str], None] | None) -> frozenset[str]:
    """No readable Tune state left: run again the planned trials that trials.parquet does not
    have as completed or stopped (Parquet is the system of record). The keys to skip."""
    where = f"{plan.source}: --resume"
    if plan.is_search or plan.spec.asha_unit == "arm":
        raise ResumeError(
            f"{where}: Ray Tune's saved state in {tune_experiment_dir(plan)} is damaged (cut "
            f"short, as when the disk filled up while Tune wrote it), and this sweep's "
            f"{'search' if plan.is_search else 'arm-level early stopping'} cannot be rebuilt "
            f"without it; the finished trials are in {target / TRIALS_FILE}; run the study again "
            f"under a new name with --set name=<new name>")
    done = finished_keys(target)
    if notify is not None:
        notify(f"Ray Tune's saved state was damaged (set aside as *.damaged); the "
               f"{len(done)} trials trials.parquet has as finished are kept, the other "
               f"{plan.num_trials - len(done)} start again from their first epoch")
    return done


def finished_trials(target: Path) -> list[FinishedTrial]:
    """What the sweep's Parquet tables (the system of record) have as finished, for the sinks."""
    if not table_exists(target, TRIALS_FILE):
        return []
    cols = ["trial_key", "arm", "seed", "status", "metric_best", "wall_time_s"]
    rows = read_trials(target, decode_config=False, columns=cols)

    def number(value: Any) -> float | None:           # pandas gives NaN for a missing value
        return None if value is None or value != value else float(value)

    return [FinishedTrial(key=r.trial_key, arm=r.arm, seed=int(r.seed), status=r.status,
                          metric_best=number(r.metric_best), wall_time_s=number(r.wall_time_s))
            for r in rows.itertuples()]
