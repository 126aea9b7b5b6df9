"""Faults raised inside chosen trials, for the tests of how a sweep handles a failing trial.

A `Faults` is a reporter wrapper (`run_sweep(..., wrap_reporter=...)`): the trial of an arm and
seed raises InjectedFault right after reporting an epoch >= EPOCH (its checkpoint saved), TIMES
times in all (a retry resumes past the epoch that failed). A marker folder keeps one file per
firing, so the count survives Tune's retries in new worker processes. Written as
`ARM/SEED@EPOCH*TIMES;...:DIR`.

The wrapper travels to the Ray workers with the trainable; `ship_by_value` makes this module
travel with it (the workers need not have tests/ on their path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class InjectedFault(RuntimeError):
    """The failure a Faults asked for."""


def parse_faults(value: str | None) -> tuple[dict[tuple[str, int], tuple[int, int]], str] | None:
    """`ARM/SEED@EPOCH*TIMES;...:DIR` -> ({(arm, seed): (epoch, times)}, marker dir), or None."""
    if not value:
        return None
    entries, _, marker_dir = value.rpartition(":")
    faults = {}
    for entry in filter(None, entries.split(";")):
        who, _, when = entry.partition("@")
        arm, _, seed = who.rpartition("/")
        epoch, _, times = when.partition("*")
        faults[(arm, int(seed))] = (int(epoch), int(times or 1))
    return faults, marker_dir


class _FaultyReporter:
    """Forwards to the trial's reporter, then raises InjectedFault after the chosen epoch."""

    def __init__(self, inner: Any, trial: Any, epoch: int, times: int, marker_dir: str):
        self._inner, self._trial, self._epoch, self._times = inner, trial, epoch, times
        self._dir = Path(marker_dir)

    def report(self, metrics: dict[str, float], *, epoch: int, checkpoint_dir: str | None) -> None:
        self._inner.report(metrics, epoch=epoch, checkpoint_dir=checkpoint_dir)
        if epoch < self._epoch:
            return
        fired = sorted(self._dir.glob(f"{self._trial.key}-*"))
        if len(fired) < self._times:
            (self._dir / f"{self._trial.key}-{len(fired) + 1}").touch()
            raise InjectedFault(f"injected fault {len(fired) + 1} of {self._times} after epoch "
                                f"{epoch} of {self._trial.arm}/seed{self._trial.seed}")


@dataclass(frozen=True)
class Faults:
    """A reporter wrapper for run_sweep: the faults of `spec` (see the module docstring)."""

    spec: str

    def __call__(self, reporter: Any, trial: Any) -> Any:
        parsed = parse_faults(self.spec)
        if parsed is None or (trial.arm, trial.seed) not in parsed[0]:
            return reporter
        epoch, times = parsed[0][(trial.arm, trial.seed)]
        return _FaultyReporter(reporter, trial, epoch, times, parsed[1])


def ship_by_value() -> None:
    """Pickle this module's classes by value, so the Ray workers need not import it."""
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
