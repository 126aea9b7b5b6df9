"""What the driver knows about a trial, and the narrow interface every result sink implements.

The runner turns Ray Tune's callbacks into these plain events; the MLflow sink (`tracking.py`), the
Parquet sink (`tables.py`) and the live progress (`progress.py`) consume them. Sinks never see Ray
objects, so each one is testable without a cluster, and all of them run in the driver only.
Sinks are idempotent by trial key (and epoch): replaying events after a `--resume` must not create
a second MLflow run or a second set of Parquet rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = ["FinishedTrial", "TrialInfo", "TrialOutcome", "Sink", "TrialStatus", "best_of",
           "is_better"]

# completed: ran all its epochs; stopped: the scheduler (ASHA) ended it early; failed: it raised.
TrialStatus = Literal["completed", "stopped", "failed"]


@dataclass(frozen=True)
class TrialInfo:
    key: str                        # stable short hash of the resolved trial config
    arm: str                        # "baseline", "act=relu6", "hpo", ...
    seed: int
    config: Mapping[str, Any]       # the resolved TrainConfig as a nested JSON-able dict
    backbone: str                   # model.backbone of the config
    tags: Mapping[str, str] = field(default_factory=dict)  # extra tags (e.g. sampled hyper-params)


@dataclass(frozen=True)
class TrialOutcome:
    key: str
    status: TrialStatus
    stop_reason: str                # "completed all N epochs", "asha: ... at epoch k", the error
    epochs_run: int
    wall_time_s: float
    final: Mapping[str, float]      # last reported value of every metric
    best: Mapping[str, float]       # best value of the spec's metric (key = metric name)
    params: int | None = None
    macs: int | None = None
    error: str = ""                 # a failed trial's full traceback (an MLflow artifact)


@dataclass(frozen=True)
class FinishedTrial:
    """A trial an earlier driver of this sweep finished, as the system of record (Parquet) has
    it: what a sink that keeps no record of its own needs to count it after `--resume`."""
    key: str
    arm: str
    seed: int
    status: TrialStatus
    metric_best: float | None
    wall_time_s: float | None


class Sink(Protocol):
    """Every sink takes the same events in this order: `start` once, then per trial
    `trial_started`, its `epoch`s and `trial_finished`, then `finish` once. `prior` (in `start`)
    lists the trials earlier drivers finished; the runner reads it from the Parquet tables, so
    no sink reads another's record. Replaying a trial's events (after `--resume`) must leave one
    record per trial key and epoch."""

    def start(self, *, sweep_name: str, storage_dir: str, spec: Mapping[str, Any],
              metric: str, mode: str, total_trials: int | None,
              prior: Sequence[FinishedTrial] = ()) -> None: ...

    def trial_started(self, info: TrialInfo) -> None: ...

    def epoch(self, key: str, epoch: int, metrics: Mapping[str, float],
              node: str = "", restored: bool = False) -> None:
        """One epoch of a trial. `restored`: an epoch a resumed trial's checkpoint holds, sent
        again in case the driver that first received it was killed before writing it: record
        it if it is missing, show nothing."""

    def trial_finished(self, outcome: TrialOutcome) -> None: ...

    def finish(self, *, interrupted: bool = False) -> None: ...


def is_better(value: float, than: float | None, mode: str) -> bool:
    """Whether `value` beats `than` for a metric maximised (`mode="max"`) or minimised; anything
    beats None."""
    return than is None or (value > than if mode == "max" else value < than)


def best_of(values: Iterable[float], mode: str) -> float | None:
    """The best of `values` by `mode`, None when there are none."""
    best: float | None = None
    for value in values:
        if is_better(value, best, mode):
            best = value
    return best
