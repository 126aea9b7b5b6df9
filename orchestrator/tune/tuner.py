"""The Ray Tune Tuner of a plan, new or restored, with its searcher, scheduler and callback.

A planned design is one grid over its trials (so every trial key is known before launch); a
search is Optuna (seeded TPE) or Tune's own variant generator over `search.space`, wrapped so
that each sample becomes its trial's TrainConfig on the driver, once, as Tune takes the trial
(`ResolvingSearch`): the callback and the worker read that config and check nothing. ASHA, when
asked for, counts epochs (`max_t = train.epochs`): per trial, it records why it stops a trial
(`orchestrator.scheduling.asha`); per arm, the seeds of an arm stop together
(`orchestrator.scheduling.arm_scheduler`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.search import (
    BasicVariantGenerator,
    ConcurrencyLimiter,
    SearchAlgorithm,
    SearchGenerator,
)
from ray.tune.search.optuna import OptunaSearch

from orchestrator.plan.model import Plan, SampleResolver
from orchestrator.plan.record import resolved_spec
from orchestrator.scheduling.arm_scheduler import ArmScheduler
from orchestrator.scheduling.asha import RecordingASHA
from orchestrator.sinks.base import Sink
from orchestrator.tune.callback import SinkCallback
from orchestrator.tune.ray_compat import restored_run_parts
from orchestrator.tune.state import CheckpointKeeper
from orchestrator.tune.storage import sweep_dir, tune_experiment_dir, tune_storage
from orchestrator.tune.trial import EPOCH_KEY, RESOLVED_KEY, sampled_values

__all__ = ["ResolvingSearch", "new_tuner", "param_space", "restored_tuner"]


def _domain(dom: Any) -> Any:
    v = dom.values
    return {
        "choice": lambda: tune.choice(list(v)),
        "grid": lambda: tune.grid_search(list(v)),
        "uniform": lambda: tune.uniform(v[0], v[1]),
        "loguniform": lambda: tune.loguniform(v[0], v[1]),
        "randint": lambda: tune.randint(v[0], v[1] + 1),   # spec bounds are inclusive
    }[dom.kind]()


def param_space(plan: Plan, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    if plan.is_search:
        return {key: _domain(dom) for key, dom in plan.spec.search.space.items()}
    # The configs themselves go to the workers by key (tune.with_parameters): Tune's config of a
    # trial says which one it is, and its epochs for the arm scheduler.
    points = [{"key": t.key, "arm": t.arm, "seed": t.seed, "epochs": t.config.train.epochs,
               "aliases": list(t.aliases)} for t in plan.trials if t.key not in skip]
    return {"trial": tune.grid_search(points)}


class ResolvingSearch(SearchAlgorithm):
    """A Tune search algorithm that hands on every trial of another one with the trial's
    TrainConfig added to its config (`RESOLVED_KEY`): the sample applied to the search base and
    validated by the plan's `SampleResolver`, here on the driver, before the trial's actor gets
    its config. Everything else is the wrapped search's, its saved state included. A restored
    trial keeps the config it was saved with."""

    def __init__(self, inner: SearchAlgorithm, resolve: SampleResolver) -> None:
        self._inner = inner
        self._resolve = resolve

    def next_trial(self) -> Any:
        trial = self._inner.next_trial()
        if trial is not None and RESOLVED_KEY not in trial.config:
            trial.config[RESOLVED_KEY] = self._resolve(sampled_values(trial.config))
        return trial

    @property
    def metric(self) -> Any:
        return self._inner.metric

    @property
    def total_samples(self) -> int:
        return self._inner.total_samples

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return self._inner.set_search_properties(metric, mode, config, **spec)

    def add_configurations(self, experiments: Any) -> None:
        self._inner.add_configurations(experiments)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        self._inner.on_trial_complete(trial_id, result=result, error=error)

    def is_finished(self) -> bool:
        return self._inner.is_finished()

    def set_finished(self) -> None:
        self._inner.set_finished()

    def has_checkpoint(self, dirpath: str) -> bool:
        return self._inner.has_checkpoint(dirpath)

    def save_to_dir(self, dirpath: str, **kwargs: Any) -> None:
        self._inner.save_to_dir(dirpath, **kwargs)

    def restore_from_dir(self, dirpath: str) -> None:
        self._inner.restore_from_dir(dirpath)


def _search_alg(plan: Plan) -> ResolvingSearch | None:
    """The search of a search plan (None for a design), with the concurrency cap applied here:
    Tune applies `max_concurrent_trials` only to searches it wraps itself."""
    resolve = plan.sampler
    if resolve is None:
        return None
    n_concurrent = plan.spec.run.max_concurrent or 0
    optuna_spec = plan.spec.search.optuna
    if optuna_spec is None:
        return ResolvingSearch(BasicVariantGenerator(max_concurrent=n_concurrent), resolve)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = plan.spec.search.num_samples
    sampler: optuna.samplers.BaseSampler
    if optuna_spec.sampler == "tpe":
        # TPE models the results after a few random start-up trials; scale those to the budget.
        sampler = optuna.samplers.TPESampler(seed=optuna_spec.seed,
                                             n_startup_trials=min(10, max(2, n // 3)))
    else:
        sampler = optuna.samplers.RandomSampler(seed=optuna_spec.seed)
    searcher: Any = OptunaSearch(sampler=sampler)
    if n_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=n_concurrent)
    return ResolvingSearch(SearchGenerator(searcher), resolve)


def _scheduler(plan: Plan, skip: frozenset[str] = frozenset()) -> Any:
    asha = plan.spec.search.asha
    if asha is None:
        return None
    if plan.spec.asha_unit == "arm":
        search = plan.spec.search
        return ArmScheduler(
            metric=search.metric, mode=search.mode, time_attr=EPOCH_KEY, max_t=plan.max_epochs,
            grace_period=asha.grace_period, reduction_factor=asha.reduction_factor,
            rule=asha.rule, confidence=asha.confidence, margin=asha.margin,
            arms=[a.name for a in plan.arms], seeds=plan.seeds_by_arm,
            references=plan.references, protected=plan.protected,
            max_concurrent=plan.spec.run.max_concurrent, log_dir=str(sweep_dir(plan)),
            ended=[(t.arm, t.seed) for t in plan.trials if t.key in skip])
    return RecordingASHA(time_attr=EPOCH_KEY, max_t=plan.max_epochs,
                         grace_period=asha.grace_period,
                         reduction_factor=asha.reduction_factor)


def _trial_dirname(trial: Any) -> str:
    cfg = trial.config
    label = (f"{cfg['trial']['arm']}_seed{cfg['trial']['seed']}" if "trial" in cfg else "hpo")
    return re.sub(r"[^\w.=-]+", "_", label)[:80] + f"_{trial.trial_id}"


def restored_tuner(plan: Plan, trainable: Any) -> tuple[Any, SinkCallback]:
    """The Tuner of an interrupted sweep, from its saved experiment, and the callback it runs."""
    tuner = tune.Tuner.restore(tune_experiment_dir(plan), trainable, resume_unfinished=True,
                               resume_errored=True)
    # Restore rebuilds the callback and the scheduler from tuner.pkl (two separate copies,
    # neither the one built here) and takes neither as an argument: use the instances Tune
    # will run, and let the callback read the stop reasons of the scheduler that really runs.
    callbacks, restored_scheduler = restored_run_parts(tuner)
    callback = next(cb for cb in callbacks if isinstance(cb, SinkCallback))
    for keeper in callbacks:
        if isinstance(keeper, CheckpointKeeper):
            keeper.configure(tune_experiment_dir(plan), plan.spec.run.checkpoints_to_keep)
    callback.attach_scheduler(restored_scheduler)
    return tuner, callback


def sink_callback(plan: Plan, target: Path, sink_factory: Callable[..., Sequence[Sink]],
                  uri: str, scheduler: Any = None) -> SinkCallback:
    """The callback that feeds the plan's sweep to the sinks built by `sink_factory`."""
    spec = plan.spec
    return SinkCallback(
        sink_factory=sink_factory, factory_kwargs={"tracking_uri": uri},
        start_kwargs={"sweep_name": spec.name, "storage_dir": str(target),
                      "spec": resolved_spec(plan), "metric": spec.search.metric,
                      "mode": spec.search.mode, "total_trials": plan.num_trials},
        scheduler=scheduler,
    )


def new_tuner(plan: Plan, trainable: Any, target: Path,
               sink_factory: Callable[..., Sequence[Sink]], uri: str,
               skip: frozenset[str]) -> tuple[Any, SinkCallback]:
    """A Tuner for the plan's trials (those not in `skip`) and the callback feeding the sinks."""
    spec = plan.spec
    scheduler = _scheduler(plan, skip)
    callback = sink_callback(plan, target, sink_factory, uri, scheduler=scheduler)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(plan, skip),
        tune_config=tune.TuneConfig(
            metric=spec.search.metric, mode=spec.search.mode, scheduler=scheduler,
            search_alg=_search_alg(plan),
            num_samples=spec.search.num_samples if plan.is_search else 1,
            # A search caps concurrency in its search algorithm (_search_alg). The arm
            # scheduler caps it itself: Tune's cap counts paused trials and would deadlock a
            # rung waiting for seeds it never started.
            max_concurrent_trials=(None if plan.is_search or spec.asha_unit == "arm"
                                   else spec.run.max_concurrent),
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname, trial_name_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=tune_storage(plan),
            callbacks=[callback, CheckpointKeeper(tune_experiment_dir(plan),
                                                  spec.run.checkpoints_to_keep)],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.run.max_failures),
            # Tune would delete a checkpoint before saving the state that stops naming it; the
            # keeper deletes instead, never one a saved state names.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )
    return tuner, callback
