"""Run (or resume) a plan as a Ray Tune experiment: the one seam between the sweep and Ray.

One driver per sweep (`orchestrator.tune.lock`). Only the driver writes results: a `SinkCallback`
forwards trial events to the Parquet, MLflow and progress sinks.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import ray
from ray import tune

from orchestrator.layout import SPEC_FILE
from orchestrator.plan.model import Plan
from orchestrator.sinks.base import Sink, TrialOutcome
from orchestrator.sinks.mlflow import MlflowSink
from orchestrator.sinks.mlflow_store import default_tracking_uri
from orchestrator.sinks.parquet import ParquetSink
from orchestrator.sinks.progress import ProgressSink
from orchestrator.tune.callback import SinkCallback
from orchestrator.tune.cluster import check_capacity
from orchestrator.tune.grow import finished_keys, keep_budget, start_grown
from orchestrator.tune.lock import DriverLock
from orchestrator.tune.ray_compat import (
    preloading_workers,
    quiet_ray,
    trials_on_preloaded_workers,
)
from orchestrator.tune.resume import (
    finished_trials,
    rerun_without_tune_state,
    set_aside_damaged_state,
)
from orchestrator.tune.stages import current_stage, describe, next_stage, study_rows
from orchestrator.tune.storage import (
    check_same_sweep,
    check_storage,
    saved_state,
    storage_problems,
    sweep_dir,
    tune_experiment_dir,
)
from orchestrator.tune.trainable import run_trial
from orchestrator.tune.trial import ReporterWrapper
from orchestrator.tune.tuner import new_tuner, restored_tuner, sink_callback

__all__ = ["TRIAL_MODULES", "SweepResult", "default_sinks", "init_local_ray", "run_sweep"]


@dataclass
class SweepResult:
    name: str
    storage_dir: Path                       # <storage>/<name>
    tracking_uri: str
    outcomes: dict[str, TrialOutcome]       # trials that finished in this run, by key
    num_errors: int                         # trials Tune counts as errored (resumed ones too)
    interrupted: bool = False
    sink_errors: list[str] = field(default_factory=list)
    tune_error: str = ""                    # Tune itself raised (after its trials had ended)
    storage_errors: list[str] = field(default_factory=list)   # storage not writable at the end

    @property
    def exit_code(self) -> int:
        """0: every trial completed or was stopped; 1: a trial failed, a sink broke, the sweep
        was cut short or its storage could not be written."""
        failed = any(o.status == "failed" for o in self.outcomes.values())
        return 1 if (failed or self.num_errors or self.sink_errors or self.interrupted
                     or self.tune_error or self.storage_errors) else 0


def default_sinks(tracking_uri: str) -> list[Sink]:
    """Parquet first (the durable record), then MLflow, then the live progress view."""
    return [ParquetSink(), MlflowSink(tracking_uri=tracking_uri), ProgressSink()]


def _quiet_ray() -> None:
    """Our own sinks own the console: Tune's tables, its CSV/JSON/TensorBoard loggers, its
    tracebacks of failed trials and its warnings stay off (the switches, and what each does in
    Ray: `_ray_compat.ENV_SWITCHES` and `QUIET_LOGGERS`)."""
    quiet_ray()


# What every trial imports: Ray's workers, started with the cluster while the driver plans, import
# them first, so a trial's actor placed on one starts without importing torch, timm and the
# models (about 5 s on 2 cores).
TRIAL_MODULES = ("torch", "timm", "trainers", "orchestrator.tune.trainable")


def init_local_ray(num_cpus: int | None = None) -> None:
    """A Ray of our own on this machine (`num_cpus`: all of its CPUs unless given), whose
    workers preload TRIAL_MODULES and take the trials: what a sweep without `--address` starts,
    and the test suite's shared session. "local": even when `ray start` left a cluster on this
    machine (a bare ray.init() would join that one, which the user did not ask for)."""
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
             log_to_driver=False, logging_level=logging.ERROR,
             _system_config=preloading_workers(TRIAL_MODULES))
    trials_on_preloaded_workers()


def local_cpus(plan: Plan) -> int:
    """The CPUs a Ray of the sweep's own is given: what its trials can use at once
    (`run.max_concurrent` trials of `run.resources_per_trial.cpu`), at most the machine's; all
    of the machine's when the spec sets no `max_concurrent`. Ray starts one worker per CPU it
    has and each preloads torch, timm and the models, so a one-slot sweep on an 8-core laptop
    would otherwise start seven workers that never run a trial (each seconds of CPU and hundreds
    of MB; benchmarks/RESULTS.md, 2026-12-07)."""
    cores = os.cpu_count() or 1
    run = plan.spec.run
    if run.max_concurrent is None:
        return cores
    return max(1, min(cores, math.ceil(run.max_concurrent * run.resources_per_trial.cpu)))


def _init_ray(address: str | None, plan: Plan) -> None:
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    else:
        init_local_ray(local_cpus(plan))


def run_sweep(
    plan: Plan,
    *,
    resume: bool = False,
    address: str | None = None,
    sink_factory: Callable[..., Sequence[Sink]] = default_sinks,
    tracking_uri: str | None = None,
    notify: Callable[[str], None] | None = None,
    wrap_reporter: ReporterWrapper | None = None,
    rerun_changed: bool = False,
) -> SweepResult:
    """Run (or resume) the sweep; returns when every trial has finished or on Ctrl-C.

    `notify` gets a line for the user when trials will wait for the autoscaler to add nodes.
    `wrap_reporter` wraps each trial's reporter in its worker (instrumentation; see
    `orchestrator.tune.trainable.ReporterWrapper`).

    One driver per sweep (`orchestrator.tune.lock.DriverLock`): a second one gets a StorageError
    naming the first.

    `resume` with a plan that grew the saved one (more seeds, arms, axis values) runs only its new
    trials, in a fresh Tune experiment; `rerun_changed` lets it rerun trials whose config changed
    (`orchestrator.tune.grow`).
    """
    # Under a seed rule the run starts from the stage that ran last (the first one if none).
    stage = current_stage(plan, sweep_dir(plan))
    target = check_storage(stage, resume=resume, rerun_changed=rerun_changed)
    # Ray first: whether a trial fits a node is known only then, and nothing is created before.
    _quiet_ray()
    _init_ray(address, plan)
    check_capacity(plan, cluster=bool(address), notify=notify)
    target.mkdir(parents=True, exist_ok=True)
    run = partial(_run_stage, target=target, sink_factory=sink_factory,
                  tracking_uri=tracking_uri, wrap_reporter=wrap_reporter)
    with DriverLock(target, f"{plan.source}: run.storage"):
        result = run(stage, resume=resume, rerun_changed=rerun_changed, notify=notify)
        while plan.spec.seed_rule is not None and result.exit_code == 0:
            step = next_stage(plan, stage, study_rows(target))
            if notify is not None:
                notify(describe(step))
            if step.plan is None:
                break
            stage = step.plan
            # The grown stage runs as `--resume` runs a grown study: only its new trials.
            result = _merged(result, run(stage, resume=True, rerun_changed=False, notify=None))
        return result


def _merged(before: SweepResult, after: SweepResult) -> SweepResult:
    """Two stages of one run as one result: every trial that finished in either."""
    return replace(after, outcomes={**before.outcomes, **after.outcomes},
                   num_errors=before.num_errors + after.num_errors,
                   sink_errors=before.sink_errors + after.sink_errors)


def _run_stage(plan: Plan, *, target: Path, resume: bool, rerun_changed: bool,
               sink_factory: Callable[..., Sequence[Sink]], tracking_uri: str | None,
               wrap_reporter: ReporterWrapper | None,
               notify: Callable[[str], None] | None) -> SweepResult:
    """Run (or resume, or grow) the plan's trials under the driver lock."""
    skip: frozenset[str] = frozenset()
    growth = (check_same_sweep(plan, target / SPEC_FILE, rerun_changed=rerun_changed)
              if resume else None)
    if resume and growth is None:
        keep_budget(plan, target)
    if growth is not None:
        skip = start_grown(plan, target, growth, tune_experiment_dir(plan), notify)
        resume = False
    elif resume and not saved_state(plan):
        # Killed before Tune saved anything (or a grown sweep killed before its experiment
        # was saved): start, but not the trials Parquet already has as finished.
        skip = finished_keys(target) if not plan.is_search else skip
        resume = False
    elif resume and set_aside_damaged_state(plan) and not saved_state(plan):
        skip = rerun_without_tune_state(plan, target, notify)
        resume = False
    return _run_locked(plan, target, resume=resume, sink_factory=sink_factory,
                       tracking_uri=tracking_uri, skip=skip, wrap_reporter=wrap_reporter)


def _run_locked(plan: Plan, target: Path, *, resume: bool,
                sink_factory: Callable[..., Sequence[Sink]], tracking_uri: str | None,
                skip: frozenset[str], wrap_reporter: ReporterWrapper | None) -> SweepResult:
    spec = plan.spec
    storage_root = Path(spec.run.storage).expanduser().resolve()
    uri = tracking_uri or default_tracking_uri(storage_root)
    # A designed study's own trials only: rows a --rerun-changed superseded are not counted.
    prior = [f for f in finished_trials(target) if plan.is_search or f.key in plan.configs]
    if skip and all(t.key in skip for t in plan.trials):
        # Every trial had finished: nothing to run. The sinks still open and close, as at the
        # end of a sweep, for an earlier driver may have ended before they could (its disk
        # full): the Parquet tables' own files then lack rows their parts hold, and MLflow's
        # sweep run is not closed.
        callback = sink_callback(plan, target, sink_factory, uri)
        callback.set_prior(prior)
        callback.setup()
        callback.finish(interrupted=False)
        return SweepResult(name=spec.name, storage_dir=target, tracking_uri=uri, outcomes={},
                           num_errors=0, sink_errors=list(callback.sink_errors))

    res = spec.run.resources_per_trial
    configs = plan.configs      # the workers' and the callback's, alike
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, configs=configs, wrap_reporter=wrap_reporter),
        {"cpu": res.cpu, "gpu": res.gpu},
    )
    if resume:
        tuner, callback = restored_tuner(plan, trainable)
    else:
        tuner, callback = new_tuner(plan, trainable, target, sink_factory, uri, skip)
    # Restored, it would log to the store saved with the experiment; log where MLflow is now.
    callback.set_factory_kwargs(tracking_uri=uri)
    callback.set_prior(prior)
    callback.set_plan(configs, search=plan.is_search)
    interrupted, num_errors, tune_error = _fit(tuner, callback)
    return SweepResult(name=spec.name, storage_dir=target, tracking_uri=uri,
                       outcomes=dict(callback.outcomes), num_errors=num_errors,
                       interrupted=interrupted, sink_errors=list(callback.sink_errors),
                       tune_error=tune_error, storage_errors=storage_problems(plan))


def _fit(tuner: Any, callback: SinkCallback) -> tuple[bool, int, str]:
    """Run the Tuner; SIGTERM stops it as Ctrl-C does. (interrupted, trial errors, Tune's own
    failure if any); the sinks are finished whatever happens."""
    interrupted, num_errors, tune_error = False, 0, ""
    previous = signal.signal(signal.SIGTERM, _sigterm_as_sigint)
    try:
        num_errors = tuner.fit().num_errors
    except KeyboardInterrupt:
        interrupted = True
    except Exception as exc:  # noqa: BLE001 - Tune's own failure (e.g. its results unreadable
        # on a full disk): the sinks hold every trial that ended; --resume continues the rest.
        interrupted = True
        tune_error = f"{type(exc).__name__}: {str(exc).strip() or 'no message'}"
    finally:
        signal.signal(signal.SIGTERM, previous)
        callback.finish(interrupted=interrupted)
    return interrupted or callback.interrupted, num_errors, tune_error


def _sigterm_as_sigint(signum: int, frame: Any) -> None:
    """SIGTERM (what `timeout`, batch schedulers and `ray stop` send) stops the sweep the way
    Ctrl-C does: Tune saves its state and stops the trials (a second signal stops at once)."""
    signal.raise_signal(signal.SIGINT)
