"""Live progress of a sweep on the terminal.

On a terminal, `ProgressSink` keeps a rich Live panel up to date: trials by state (pending,
running, completed, stopped, failed), the best value of the spec's metric so far and its trial,
the latest rung (highest epoch any trial reached), the elapsed time and an ETA (average trial
time x trials left / trials running at once). Finished trials are also printed as lines above
the panel. When the output is not a terminal (CI, `| tee`, a log file) it prints plain
timestamped lines instead, one per event.

The console is the CLI's: this module writes only through the `rich.console.Console` it is given.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.sinks.base import FinishedTrial, TrialInfo, TrialOutcome, is_better

__all__ = ["ProgressSink"]

_STATES = ("pending", "running", "completed", "stopped", "failed")
_MAX_RUNNING_ROWS = 12


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressSink:
    """Shows a sweep's progress. `live=None` picks the Live panel exactly when on a terminal."""

    def __init__(self, console: Console | None = None, live: bool | None = None,
                 refresh_per_second: float = 2.0) -> None:
        self.console = console
        self.live = live
        self.refresh_per_second = refresh_per_second
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._reset()

    def _reset(self) -> None:
        self._sweep = ""
        self._metric = ""
        self._mode = "max"
        self._total: int | None = None
        self._t0 = time.monotonic()
        self._names: dict[str, str] = {}               # key -> "arm/seedk"
        self._state: dict[str, str] = {}              # key -> running|completed|stopped|failed
        self._epoch: dict[str, int] = {}
        self._value: dict[str, float] = {}             # key -> latest value of the metric
        self._durations: list[float] = []
        self._max_running = 0
        self._best: tuple[float, str] | None = None

    # -- Sink protocol ---------------------------------------------------------------------------
    def start(self, *, sweep_name: str, storage_dir: str, spec: Mapping[str, Any],
              metric: str, mode: str, total_trials: int | None,
              prior: Sequence[FinishedTrial] = ()) -> None:
        self._reset()
        self._sweep, self._metric, self._mode, self._total = sweep_name, metric, mode, total_trials
        self._count_prior(prior)
        if self.console is None:
            self.console = Console(stderr=True)
        if self.live is None:
            self.live = self.console.is_terminal
        if self.live:
            self._live = Live(console=self.console, get_renderable=self._render,
                              refresh_per_second=self.refresh_per_second, transient=False)
            self._live.start()
        else:
            total = "?" if total_trials is None else total_trials
            self._line(f"sweep {sweep_name}: {total} trials, {mode}imizing {metric}")

    def trial_started(self, info: TrialInfo) -> None:
        with self._lock:
            self._names[info.key] = f"{info.arm}/seed{info.seed}"
            self._state[info.key] = "running"
            self._max_running = max(self._max_running, self._count("running"))
        if not self.live:
            self._line(f"trial {self._label(info.key)} started")

    def epoch(self, key: str, epoch: int, metrics: Mapping[str, float], node: str = "",
              restored: bool = False) -> None:
        value = metrics.get(self._metric)
        with self._lock:
            self._epoch[key] = max(int(epoch), self._epoch.get(key, 0))
            if isinstance(value, (int, float)) and not math.isnan(float(value)):
                if not restored:
                    self._value[key] = float(value)
                self._offer_best(float(value), key)
        if not self.live and not restored:
            shown = {self._metric: value} if value is not None else dict(list(metrics.items())[:3])
            text = " ".join(f"{k}={_fmt(_as_float(v))}" for k, v in shown.items())
            self._line(f"trial {self._label(key)} epoch {epoch} {text}")

    def trial_finished(self, outcome: TrialOutcome) -> None:
        best = outcome.best.get(self._metric)
        with self._lock:
            self._state[outcome.key] = outcome.status
            self._durations.append(float(outcome.wall_time_s))
            if best is not None and not math.isnan(float(best)):
                self._offer_best(float(best), outcome.key)
        self._line(
            f"trial {self._label(outcome.key)} {outcome.status} after {outcome.epochs_run} "
            f"epochs in {outcome.wall_time_s:.1f} s, best {self._metric}={_fmt(best)}"
            + (f" ({outcome.stop_reason})" if outcome.stop_reason else "")
        )

    def finish(self, *, interrupted: bool = False) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        counts = ", ".join(f"{self._count(s)} {s}" for s in _STATES[2:])
        word = "interrupted" if interrupted else "finished"
        self._line(f"sweep {self._sweep} {word} after {_duration(self._elapsed())}: {counts}")

    def _count_prior(self, prior: Sequence[FinishedTrial]) -> None:
        """After --resume: trials finished by an earlier driver count as finished, not pending."""
        for trial in prior:
            self._state[trial.key] = trial.status
            self._names[trial.key] = f"{trial.arm}/seed{trial.seed}"
            if trial.wall_time_s is not None and not math.isnan(trial.wall_time_s):
                self._durations.append(float(trial.wall_time_s))
            if trial.metric_best is not None and not math.isnan(trial.metric_best):
                self._offer_best(float(trial.metric_best), trial.key)

    # -- state -----------------------------------------------------------------------------------
    def _offer_best(self, value: float, key: str) -> None:
        if is_better(value, self._best[0] if self._best else None, self._mode):
            self._best = (value, key)

    def _count(self, state: str) -> int:
        if state == "pending":
            return max(0, self._total - len(self._state)) if self._total is not None else 0
        return sum(1 for s in self._state.values() if s == state)

    def _elapsed(self) -> float:
        return time.monotonic() - self._t0

    def _eta(self) -> float | None:
        """Average finished-trial time x trials left, spread over the trials that run at once."""
        if not self._durations or self._total is None:
            return None
        left = self._count("pending") + self._count("running")
        return statistics.fmean(self._durations) * left / max(1, self._max_running)

    def _label(self, key: str) -> str:
        return f"{key[:8]} {self._names.get(key, '?')}"

    def _line(self, message: str) -> None:
        assert self.console is not None, "start() sets the console"
        stamp = time.strftime("%H:%M:%S")
        self.console.print(f"[{stamp}] {message}", markup=False, highlight=False, soft_wrap=True)

    # -- the live panel --------------------------------------------------------------------------
    def _render(self) -> Group:
        with self._lock:
            states = Table(title=f"sweep {self._sweep}", title_justify="left", expand=False)
            for s in _STATES:
                states.add_column(s, justify="right")
            states.add_row(*(str(self._count(s)) for s in _STATES))
            best = (f"{self._best[0]:.4g} ({self._label(self._best[1])})"
                    if self._best else "-")
            rung = max(self._epoch.values(), default=0)
            info = Text(
                f"best {self._metric} ({self._mode}): {best}   rung: epoch {rung}   "
                f"elapsed {_duration(self._elapsed())}   ETA {_duration(self._eta())}"
            )
            running = Table(show_edge=False, box=None, pad_edge=False)
            for col in ("trial", "epoch", self._metric):
                running.add_column(col)
            keys = [k for k, s in self._state.items() if s == "running"]
            for key in keys[:_MAX_RUNNING_ROWS]:
                running.add_row(self._label(key), str(self._epoch.get(key, 0)),
                                _fmt(self._value.get(key)))
            if len(keys) > _MAX_RUNNING_ROWS:
                running.add_row(f"... {len(keys) - _MAX_RUNNING_ROWS} more", "", "")
        return Group(states, info, running) if keys else Group(states, info)


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
