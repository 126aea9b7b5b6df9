"""The driver-side Tune callback that turns Ray's trial events into Sink events.

It is the only place that sees both Ray objects and sinks: Tune's trial, result and error become
`TrialInfo`, `(key, epoch, metrics)` and `TrialOutcome` (events.py). Tune pickles callbacks with
the experiment, so the sinks (MLflow client, rich console, file handles) are created in `setup()`,
never in `__init__`. A sink that raises is switched off and its error kept for the runner to report
(one broken sink must not abort the trials or starve the other sinks).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator.plan.keys import trial_key
from orchestrator.plan.model import PlannedTrial
from orchestrator.sinks.base import (
    FinishedTrial,
    Sink,
    TrialInfo,
    TrialOutcome,
    TrialStatus,
    is_better,
)
from orchestrator.tune.ray_compat import tune_result_keys
from orchestrator.tune.trial import EPOCH_KEY, NODE_KEY, RESTORED_KEY, identify, sampled_values
from trainers.config import TrainConfig

__all__ = ["SinkCallback"]

logger = logging.getLogger(__name__)

# Tune's own keys in a result and our epoch counter; everything else numeric is a trainer metric.
_TUNE_KEYS = tune_result_keys() | {EPOCH_KEY, RESTORED_KEY}


def _metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The numbers among `values` (booleans are not metrics)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _node(result: Mapping[str, Any]) -> str:
    """`<node ip>:<node id[:8]>` of the node that produced a result (the ip alone can be shared
    by several Ray nodes on one machine), or "" when the trainable did not say."""
    node_id = result.get(NODE_KEY)
    if not isinstance(node_id, str) or not node_id:
        return ""
    return f"{result.get('node_ip') or '?'}:{node_id[:8]}"


class SinkCallback(Callback):
    def __init__(self, *, sink_factory: Callable[..., Sequence[Sink]], factory_kwargs: Mapping,
                 start_kwargs: Mapping[str, Any], scheduler: Any = None) -> None:
        self._factory = sink_factory
        self._factory_kwargs = dict(factory_kwargs)
        self._start_kwargs = dict(start_kwargs)
        self._scheduler = scheduler        # RecordingASHA (shared object) or None
        self._configs: Mapping[str, TrainConfig] = {}
        self._search = False
        self._reset_state()

    def _reset_state(self) -> None:
        self._sinks: list[Sink] = []
        self.sink_errors: list[str] = []
        self.outcomes: dict[str, TrialOutcome] = {}
        self._trials: dict[str, PlannedTrial] = {}       # tune trial id -> planned trial
        self._key_owner: dict[str, str] = {}             # trial key -> tune trial id
        self._started_at: dict[str, float] = {}
        self._last: dict[str, dict[str, float]] = {}
        self._best: dict[str, float] = {}
        self._epochs: dict[str, int] = {}
        self.finished = False
        self.interrupted = False
        self._started_ids: set[str] = set()
        self._finished_ids: set[str] = set()
        self._announced: set[str] = set()

    def set_factory_kwargs(self, **kwargs: Any) -> None:
        """Change what the sinks are built with (a resumed sweep logs to today's MLflow store,
        not to the one saved with the experiment)."""
        self._factory_kwargs.update(kwargs)

    def set_prior(self, prior: Sequence[FinishedTrial]) -> None:
        """The trials earlier drivers finished, handed to every sink's `start` (a restored
        callback carries the list saved with the experiment: always set it anew)."""
        self._start_kwargs["prior"] = tuple(prior)

    def set_plan(self, configs: Mapping[str, TrainConfig], *, search: bool) -> None:
        """The plan's trial configs by key, as the workers get them, and whether it is a search
        (set by the runner on every run: they are not saved with the experiment)."""
        self._configs, self._search = configs, search

    def attach_scheduler(self, scheduler: Any) -> None:
        """The scheduler whose `stop_reasons` (trial id -> why) mark trials as stopped."""
        self._scheduler = scheduler

    def __getstate__(self) -> dict[str, Any]:
        # Live sinks and per-run state never travel with the pickled experiment.
        state = self.__dict__.copy()
        for name in ("_scheduler", "_configs", "_search", "_sinks", "sink_errors", "outcomes",
                     "_trials", "_key_owner", "_started_at", "_last", "_best", "_epochs",
                     "finished", "interrupted", "_started_ids", "_finished_ids", "_announced"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._scheduler = None      # the runner attaches the live one and sets the plan
        self._configs, self._search = {}, False
        self._reset_state()

    # -- fan-out -----------------------------------------------------------------------------------
    def _emit(self, method: str, *args: Any, **kwargs: Any) -> None:
        for sink in list(self._sinks):
            try:
                getattr(sink, method)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - isolate sinks from each other and Tune
                msg = f"{type(sink).__name__}.{method} failed: {type(exc).__name__}: {exc}"
                logger.error(msg)
                self.sink_errors.append(msg)
                self._sinks.remove(sink)

    # -- Tune callback hooks -----------------------------------------------------------------------
    def setup(self, stop: Any = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        self._reset_state()
        self._sinks = list(self._factory(**self._factory_kwargs))
        self._emit("start", **self._start_kwargs)

    def _planned(self, trial: Any) -> PlannedTrial:
        planned = self._trials.get(trial.trial_id)
        if planned is not None:
            return planned
        planned = identify(trial.config, configs=self._configs)
        owner = self._key_owner.get(planned.key)
        if owner is not None and owner != trial.trial_id:
            # Two searched samples resolved to the same config: keep both, distinctly keyed.
            n = sum(1 for p in self._trials.values() if p.config == planned.config)
            planned = PlannedTrial(trial_key({**planned.config.to_dict(), "_duplicate": n}),
                                   planned.arm, planned.seed, planned.config, planned.aliases)
        self._key_owner[planned.key] = trial.trial_id
        self._trials[trial.trial_id] = planned
        return planned

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started_at.setdefault(trial.trial_id, time.time())
        self._started_ids.add(trial.trial_id)
        self._announce(trial)

    def _announce(self, trial: Any) -> None:
        """Tell the sinks about a trial (again after a pause: they are idempotent by key)."""
        p = self._planned(trial)
        self._announced.add(trial.trial_id)
        tags = {"tune_trial_id": trial.trial_id}
        if p.aliases:
            tags["aliases"] = ";".join(p.aliases)
        if "trial" not in trial.config:
            tags.update({f"sampled.{k}": str(v) for k, v in sampled_values(trial.config).items()})
        self._emit("trial_started", TrialInfo(key=p.key, arm=p.arm, seed=p.seed,
                                              config=p.config.to_dict(), backbone=p.backbone,
                                              tags=tags))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        p = self._planned(trial)
        epoch, metrics = self._observe(trial, result)
        if isinstance(restored := result.get(RESTORED_KEY), str):
            self._restore_epochs(trial, p.key, restored, before=epoch)
        self._emit("epoch", p.key, epoch, metrics, node=_node(result))

    def _restore_epochs(self, trial: Any, key: str, text: str, *, before: int) -> None:
        """A resumed trial's checkpoint history (metrics.jsonl rows): its epochs before `before`
        go to the sinks as restored ones, which record those they lack (a killed driver had them
        in memory only) and show none."""
        for line in filter(None, text.splitlines()):
            row = json.loads(line)
            epoch = int(row.pop("epoch"))
            if epoch >= before:
                continue
            metrics = _metrics(row)
            self._offer_best(trial.trial_id, metrics)
            self._emit("epoch", key, epoch, metrics, restored=True)

    def _observe(self, trial: Any, result: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
        """Keep a result's epoch, metrics and the best value of the spec's metric."""
        epoch = int(result.get(EPOCH_KEY, result.get("training_iteration", 0)))
        metrics = _metrics({k: v for k, v in result.items() if k not in _TUNE_KEYS})
        tid = trial.trial_id
        self._epochs[tid] = epoch
        self._last[tid] = metrics
        self._offer_best(tid, metrics)
        return epoch, metrics

    def _offer_best(self, tid: str, metrics: Mapping[str, float]) -> None:
        """Keep the spec's metric as the trial's best if it is better than the best so far."""
        value = metrics.get(self._start_kwargs["metric"])
        if value is not None and not math.isnan(value) and is_better(
                value, self._best.get(tid), self._start_kwargs["mode"]):
            self._best[tid] = value

    def _outcome(self, trial: Any, status: TrialStatus, reason: str, error: str = ""
                 ) -> TrialOutcome:
        p = self._planned(trial)
        tid = trial.trial_id
        last = self._last.get(tid, {})
        metric = self._start_kwargs["metric"]
        wall = (trial.last_result or {}).get("time_total_s")
        if wall is None:
            wall = time.time() - self._started_at.get(tid, time.time())
        params, macs = last.get("params"), last.get("macs")
        return TrialOutcome(
            key=p.key, status=status, stop_reason=reason, epochs_run=self._epochs.get(tid, 0),
            wall_time_s=float(wall), final=dict(last),
            best={metric: self._best[tid]} if tid in self._best else {},
            params=None if params is None else int(params),
            macs=None if macs is None else int(macs), error=error,
        )

    def _catch_up(self, trial: Any) -> None:
        """A trial restored by --resume that ends without a new result here (stopped with its
        arm, or already past its last epoch): announce it and take its last known result (the
        best over its epochs is then the Parquet sink's to compute from its curve)."""
        if trial.trial_id not in self._announced:
            self._announce(trial)
        if trial.trial_id not in self._last and trial.last_result:
            self._observe(trial, trial.last_result)
            self._best.pop(trial.trial_id, None)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        p = self._planned(trial)
        self._catch_up(trial)
        epochs, planned_epochs = self._epochs.get(trial.trial_id, 0), p.config.train.epochs
        stops = getattr(self._scheduler, "stop_reasons", {})
        if trial.trial_id in stops:
            outcome = self._outcome(trial, "stopped", stops[trial.trial_id])
        elif epochs >= planned_epochs:
            outcome = self._outcome(trial, "completed", f"completed all {planned_epochs} epochs")
        else:
            outcome = self._outcome(trial, "failed", f"ended after {epochs} of {planned_epochs} "
                                                     f"epochs without an error or a stop decision")
        self.outcomes[p.key] = outcome
        self._finished_ids.add(trial.trial_id)
        self._emit("trial_finished", outcome)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        p = self._planned(trial)
        self._catch_up(trial)
        text = ""
        try:
            # Tune writes the traceback to the trial's local folder first (error_file) and
            # copies it to the storage (get_error) later.
            local = Path(trial.error_file) if getattr(trial, "error_file", None) else None
            text = (local.read_text() if local and local.is_file() else trial.get_error()) or ""
        except Exception:  # noqa: BLE001 - the error file may be on another node
            pass
        lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
        reason = "error: " + (lines[-1] if lines else "the trial raised (see Tune's error.txt)")
        # Ray colours its traceback header; the artifact is read as plain text.
        error = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
        outcome = self._outcome(trial, "failed", reason[:2000], error=error)
        self.outcomes[p.key] = outcome
        self._finished_ids.add(trial.trial_id)
        self._emit("trial_finished", outcome)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # Tune ends its loop quietly on Ctrl-C (state saved) and then stops the running trials,
        # so their status says little: a trial started here without an outcome, or one never
        # started that an earlier driver did not finish either, means the sweep was cut short.
        total = self._start_kwargs.get("total_trials")
        self.interrupted = any(
            t.trial_id not in self._finished_ids
            and (t.trial_id in self._started_ids or t.status not in ("TERMINATED", "ERROR"))
            for t in trials
        ) or (total is not None and self._search and len(trials) < total)
        self.finish(interrupted=self.interrupted)

    def finish(self, *, interrupted: bool) -> None:
        if self.finished:
            return
        self.finished = True
        self._emit("finish", interrupted=interrupted)
