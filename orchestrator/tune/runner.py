"""Build and run the Ray Tune experiment of a plan: scheduler, searcher, resources, restore.

This is the one seam between the sweep and Ray. A planned design is one grid over its trials (so
every trial key is known before launch); a search is Optuna (seeded TPE) or Tune's own variant
generator over `search.space`. ASHA, when asked for, counts epochs (`max_t = train.epochs`) and
records why it stops a trial (`_asha.RecordingASHA`). Only the driver writes results: a
`SinkCallback` forwards trial events to the MLflow, Parquet and progress sinks.

`check_storage` runs before anything is created: a storage root that cannot be written, a sweep
that already exists without `--resume`, or a `--resume` with nothing to resume is a SweepError.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator._files import filesystem, is_uri
from orchestrator.errors import ResumeError, StorageError
from orchestrator.plan.model import Plan
from orchestrator.sinks.base import FinishedTrial, Sink, TrialOutcome

if TYPE_CHECKING:
    from orchestrator.tune.callback import SinkCallback

__all__ = ["SweepResult", "check_storage", "default_sinks", "run_sweep", "sweep_dir"]

TUNE_DIR = "tune"


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


def sweep_dir(plan: Plan) -> Path:
    return Path(plan.spec.run.storage).expanduser().resolve() / plan.spec.name


def _tune_storage(plan: Plan) -> str:
    """Tune's storage_path: `run.tune_storage` (a shared folder or an s3:// / gs:// URI) or, by
    default, `<storage>/<name>/tune` in the sweep's own folder."""
    where = plan.spec.run.tune_storage
    if where is None:
        return str(sweep_dir(plan) / TUNE_DIR)
    return where if is_uri(where) else str(Path(where).expanduser().resolve())


def _tune_experiment_dir(plan: Plan) -> str:
    """Where Tune keeps this sweep's experiment (tuner.pkl, its state, trial checkpoints)."""
    return f"{_tune_storage(plan).rstrip('/')}/{plan.spec.name}"


def _unwritable(folder: Path) -> Path | None:
    """The folder that would hold `folder` (itself, or its nearest existing parent) when it is
    not a folder this process may create files in; None when it is."""
    probe = folder.expanduser().resolve()
    while not probe.exists():
        probe = probe.parent
    return None if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK) else probe


def _check_tune_storage(plan: Plan, *, resume: bool) -> None:
    """run.tune_storage must be reachable and writable, and hold no other sweep of this name."""
    location = plan.spec.run.tune_storage
    if location is None:
        return
    where = f"{plan.source}: run.tune_storage"
    if not is_uri(location) and (probe := _unwritable(Path(location))) is not None:
        raise StorageError(f"{where}: cannot write to {location} ({probe} is not a writable "
                           f"folder); give a folder every node of the cluster mounts, or an "
                           f"s3:// or gs:// URI")
    try:
        fs, path = filesystem(location)
        info = fs.get_file_info(path)
        # Tune creates folders under the location, but never the bucket itself.
        bucket = fs.get_file_info(path.split("/", 1)[0]) if is_uri(location) else None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises OSError/ArrowInvalid by backend
        raise StorageError(
            f"{where}: cannot reach {location}: {str(exc).strip().splitlines()[0]}; check the "
            f"bucket name and the credentials (for S3: AWS_ACCESS_KEY_ID / "
            f"AWS_SECRET_ACCESS_KEY or an instance profile, AWS_ENDPOINT_URL for a non-AWS "
            f"server)") from None
    import pyarrow.fs as pafs

    if info.type == pafs.FileType.File:
        raise StorageError(f"{where}: {location} is a file, not a folder")
    if bucket is not None and bucket.type == pafs.FileType.NotFound:
        scheme = location.split("://", 1)[0].lower()
        make = {"s3": f", e.g. aws s3 mb s3://{bucket.path}",
                "gs": f", e.g. gcloud storage buckets create gs://{bucket.path}"}.get(scheme, "")
        raise StorageError(f"{where}: the bucket {bucket.path!r} of {location} does not exist "
                           f"(or these credentials cannot see it); create it first{make}")
    if not resume and _saved_state(plan):
        raise StorageError(
            f"{where}: a Tune experiment named '{plan.spec.name}' already exists at "
            f"{_tune_experiment_dir(plan)}; pass --resume to continue it, or start a new sweep "
            f"with --set name=<new name>")


def check_storage(plan: Plan, *, resume: bool) -> Path:
    """The sweep's folder, if it may be used; raises StorageError/ResumeError, creates nothing."""
    root = Path(plan.spec.run.storage).expanduser()
    where = f"{plan.source}: run.storage"
    if root.exists() and not root.is_dir():
        raise StorageError(f"{where}: {root} is a file, not a folder; point run.storage at a "
                           f"folder (for example --set run.storage=./sweeps)")
    if (probe := _unwritable(root)) is not None:
        raise StorageError(f"{where}: cannot write to {root} ({probe} is not writable); choose "
                           f"a folder you can write, e.g. --set run.storage=./sweeps")
    target = sweep_dir(plan)
    _check_tune_storage(plan, resume=resume)
    if resume:
        # Killed before Tune saved anything, a resumed sweep simply starts (a restart script
        # can always say --resume); it must still be the same sweep.
        _check_same_sweep(plan, target / "spec.yaml")
    elif target.exists() and any(target.iterdir()):
        raise StorageError(f"{where}: a sweep named '{plan.spec.name}' already exists in "
                           f"{target}; pass --resume to continue it, or start a new one with "
                           f"--set name=<new name> (or remove that folder)")
    return target


def _saved_state(plan: Plan) -> bool:
    """Whether Tune saved this sweep's experiment (its tuner and a state snapshot)."""
    from orchestrator.tune.state import has_saved_state

    return has_saved_state(_tune_experiment_dir(plan))


def _check_same_sweep(plan: Plan, saved_path: Path) -> None:
    """--resume continues the sweep it saved: same spec, same --set values, same --smoke."""
    import json

    from orchestrator._provenance import parse_spec_yaml

    if not saved_path.is_file():
        return
    saved = parse_spec_yaml(saved_path.read_text()) or {}
    current = json.loads(json.dumps(_resolved_spec(plan)))
    differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if differ:
        raise ResumeError(
            f"{plan.source}: --resume: this is not the sweep saved in {saved_path.parent} "
            f"({', '.join(differ)} differ from its spec.yaml); resume with the same spec file, "
            f"--set options and --smoke as the run that started it"
        )


def default_sinks(tracking_uri: str) -> list[Sink]:
    """Parquet first (the durable record), then MLflow, then the live progress view."""
    from orchestrator.sinks.mlflow import MlflowSink
    from orchestrator.sinks.parquet import ParquetSink
    from orchestrator.sinks.progress import ProgressSink

    return [ParquetSink(), MlflowSink(tracking_uri=tracking_uri), ProgressSink()]


def _quiet_ray() -> None:
    """Our own sinks own the console: Tune's tables, its CSV/JSON/TensorBoard loggers, its
    tracebacks of failed trials and its warnings stay off (the switches, and what each does in
    Ray: `_ray_compat.ENV_SWITCHES` and `QUIET_LOGGERS`)."""
    from orchestrator.tune.ray_compat import quiet_ray

    quiet_ray()


# What every trial imports: Ray's workers, started with the cluster while the driver plans, import
# them first, so a trial's actor starts without importing torch, timm and the models (3 s each).
TRIAL_MODULES = ("torch", "timm", "trainers", "orchestrator.tune.trainable")


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    else:
        # "local": a Ray of our own even when `ray start` left a cluster on this machine (a
        # bare ray.init() would join that one, which the user did not ask for).
        from orchestrator.tune.ray_compat import preloading_workers

        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR,
                 _system_config=preloading_workers(TRIAL_MODULES))


def _domain(dom: Any) -> Any:
    from ray import tune

    v = dom.values
    return {
        "choice": lambda: tune.choice(list(v)),
        "grid": lambda: tune.grid_search(list(v)),
        "uniform": lambda: tune.uniform(v[0], v[1]),
        "loguniform": lambda: tune.loguniform(v[0], v[1]),
        "randint": lambda: tune.randint(v[0], v[1] + 1),   # spec bounds are inclusive
    }[dom.kind]()


def _param_space(plan: Plan, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    from ray import tune

    if plan.is_search:
        return {key: _domain(dom) for key, dom in plan.spec.search.space.items()}
    # The configs themselves go to the workers by key (tune.with_parameters): Tune's config of a
    # trial says which one it is, and its epochs for the arm scheduler.
    points = [{"key": t.key, "arm": t.arm, "seed": t.seed, "epochs": t.config.train.epochs,
               "aliases": list(t.aliases)} for t in plan.trials if t.key not in skip]
    return {"trial": tune.grid_search(points)}


def _search_alg(plan: Plan) -> Any:
    optuna_spec = plan.spec.search.optuna
    if optuna_spec is None:
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = plan.spec.search.num_samples
    sampler: optuna.samplers.BaseSampler
    if optuna_spec.sampler == "tpe":
        # TPE models the results after a few random start-up trials; scale those to the budget.
        sampler = optuna.samplers.TPESampler(seed=optuna_spec.seed,
                                             n_startup_trials=min(10, max(2, n // 3)))
    else:
        sampler = optuna.samplers.RandomSampler(seed=optuna_spec.seed)
    return OptunaSearch(sampler=sampler)


def _scheduler(plan: Plan) -> Any:
    asha = plan.spec.search.asha
    if asha is None:
        return None
    from orchestrator.tune.trainable import EPOCH_KEY

    if plan.spec.asha_unit == "arm":
        from orchestrator.scheduling.arm_scheduler import ArmScheduler

        search = plan.spec.search
        return ArmScheduler(
            metric=search.metric, mode=search.mode, time_attr=EPOCH_KEY, max_t=plan.max_epochs,
            grace_period=asha.grace_period, reduction_factor=asha.reduction_factor,
            rule=asha.rule, confidence=asha.confidence, margin=asha.margin,
            arms=[a.name for a in plan.arms], seeds=list(plan.spec.seeds),
            references=plan.references, protected=plan.protected,
            max_concurrent=plan.spec.run.max_concurrent, log_dir=str(sweep_dir(plan)))
    from orchestrator.scheduling.asha import RecordingASHA

    return RecordingASHA(time_attr=EPOCH_KEY, max_t=plan.max_epochs,
                         grace_period=asha.grace_period,
                         reduction_factor=asha.reduction_factor)


def _trial_dirname(trial: Any) -> str:
    cfg = trial.config
    label = (f"{cfg['trial']['arm']}_seed{cfg['trial']['seed']}" if "trial" in cfg else "hpo")
    return re.sub(r"[^\w.=-]+", "_", label)[:80] + f"_{trial.trial_id}"


def run_sweep(
    plan: Plan,
    *,
    resume: bool = False,
    address: str | None = None,
    sink_factory: Callable[..., Sequence[Sink]] = default_sinks,
    tracking_uri: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run (or resume) the sweep; returns when every trial has finished or on Ctrl-C.

    `notify` gets a line for the user when trials will wait for the autoscaler to add nodes.

    One driver per sweep (`_lock.DriverLock`): a second one gets a StorageError naming the first.
    """
    from orchestrator.tune.cluster import check_capacity
    from orchestrator.tune.lock import DriverLock

    target = check_storage(plan, resume=resume)
    # Ray first: whether a trial fits a node is known only then, and nothing is created before.
    _quiet_ray()
    _init_ray(address)
    check_capacity(plan, cluster=bool(address), notify=notify)
    target.mkdir(parents=True, exist_ok=True)
    with DriverLock(target, f"{plan.source}: run.storage"):
        skip: frozenset[str] = frozenset()
        resume = resume and _saved_state(plan)
        if resume and _set_aside_damaged_state(plan) and not _saved_state(plan):
            skip = _rerun_without_tune_state(plan, target, notify)
            resume = False
        return _run_locked(plan, target, resume=resume, address=address,
                           sink_factory=sink_factory, tracking_uri=tracking_uri, skip=skip)


def _set_aside_damaged_state(plan: Plan) -> bool:
    """Tune's newest saved session cut short (a disk that filled up while Tune copied it)? Set
    it aside (`*.damaged`) so that Tune restores an older whole one if there is one. Whether
    anything was set aside."""
    from orchestrator.tune.state import set_aside_damaged_sessions

    return set_aside_damaged_sessions(_tune_experiment_dir(plan))


def _rerun_without_tune_state(plan: Plan, target: Path,
                              notify: Callable[[str], None] | None) -> frozenset[str]:
    """No readable Tune state left: run again the planned trials that trials.parquet does not
    have as completed or stopped (Parquet is the system of record). The keys to skip."""
    from orchestrator.sinks.parquet import TRIALS_FILE, read_trials, table_exists

    where = f"{plan.source}: --resume"
    if plan.is_search or plan.spec.asha_unit == "arm":
        raise ResumeError(
            f"{where}: Ray Tune's saved state in {_tune_experiment_dir(plan)} is damaged (cut "
            f"short, as when the disk filled up while Tune wrote it), and this sweep's "
            f"{'search' if plan.is_search else 'arm-level early stopping'} cannot be rebuilt "
            f"without it; the finished trials are in {target / TRIALS_FILE}; run the study again "
            f"under a new name with --set name=<new name>")
    done: frozenset[str] = frozenset()
    if table_exists(target, TRIALS_FILE):
        trials = read_trials(target, decode_config=False)
        done = frozenset(trials.loc[trials["status"].isin(["completed", "stopped"]), "trial_key"])
    if notify is not None:
        notify(f"Ray Tune's saved state was damaged (set aside as *.damaged); the "
               f"{len(done)} trials trials.parquet has as finished are kept, the other "
               f"{plan.num_trials - len(done)} start again from their first epoch")
    return done


def _run_locked(plan: Plan, target: Path, *, resume: bool, address: str | None,
                sink_factory: Callable[..., Sequence[Sink]], tracking_uri: str | None,
                skip: frozenset[str] = frozenset()) -> SweepResult:
    from ray import tune

    from orchestrator.sinks.mlflow import default_tracking_uri
    from orchestrator.tune.trainable import FAULT_ENV, run_trial

    spec = plan.spec
    storage_root = Path(spec.run.storage).expanduser().resolve()
    uri = tracking_uri or default_tracking_uri(storage_root)
    if skip and all(t.key in skip for t in plan.trials):
        return SweepResult(name=spec.name, storage_dir=target, tracking_uri=uri, outcomes={},
                           num_errors=0)       # every trial had finished: nothing to run

    res = spec.run.resources_per_trial
    configs, sampler = plan.configs, plan.sampler     # the workers' and the callback's, alike
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, configs=configs, sampler=sampler,
                             faults=os.environ.get(FAULT_ENV)),
        {"cpu": res.cpu, "gpu": res.gpu},
    )
    if resume:
        tuner, callback = _restored_tuner(plan, trainable)
    else:
        tuner, callback = _new_tuner(plan, trainable, target, sink_factory, uri, skip)
    # Restored, it would log to the store saved with the experiment; log where MLflow is now.
    callback.set_factory_kwargs(tracking_uri=uri)
    callback.set_prior(_finished_trials(target))
    callback.set_plan(configs, sampler)
    interrupted, num_errors, tune_error = _fit(tuner, callback)
    return SweepResult(name=spec.name, storage_dir=target, tracking_uri=uri,
                       outcomes=dict(callback.outcomes), num_errors=num_errors,
                       interrupted=interrupted, sink_errors=list(callback.sink_errors),
                       tune_error=tune_error, storage_errors=storage_problems(plan))


def _restored_tuner(plan: Plan, trainable: Any) -> tuple[Any, SinkCallback]:
    """The Tuner of an interrupted sweep, from its saved experiment, and the callback it runs."""
    from ray import tune

    from orchestrator.tune.callback import SinkCallback
    from orchestrator.tune.ray_compat import restored_run_parts
    from orchestrator.tune.state import CheckpointKeeper

    tuner = tune.Tuner.restore(_tune_experiment_dir(plan), trainable, resume_unfinished=True,
                               resume_errored=True)
    # Restore rebuilds the callback and the scheduler from tuner.pkl (two separate copies,
    # neither the one built here) and takes neither as an argument: use the instances Tune
    # will run, and let the callback read the stop reasons of the scheduler that really runs.
    callbacks, restored_scheduler = restored_run_parts(tuner)
    callback = next(cb for cb in callbacks if isinstance(cb, SinkCallback))
    for keeper in callbacks:
        if isinstance(keeper, CheckpointKeeper):
            keeper.configure(_tune_experiment_dir(plan), plan.spec.run.checkpoints_to_keep)
    callback.attach_scheduler(restored_scheduler)
    return tuner, callback


def _new_tuner(plan: Plan, trainable: Any, target: Path,
               sink_factory: Callable[..., Sequence[Sink]], uri: str,
               skip: frozenset[str]) -> tuple[Any, SinkCallback]:
    """A Tuner for the plan's trials (those not in `skip`) and the callback feeding the sinks."""
    from ray import tune

    from orchestrator.tune.callback import SinkCallback
    from orchestrator.tune.state import CheckpointKeeper

    spec = plan.spec
    scheduler = _scheduler(plan)
    callback = SinkCallback(
        sink_factory=sink_factory, factory_kwargs={"tracking_uri": uri},
        start_kwargs={"sweep_name": spec.name, "storage_dir": str(target),
                      "spec": _resolved_spec(plan), "metric": spec.search.metric,
                      "mode": spec.search.mode, "total_trials": plan.num_trials},
        scheduler=scheduler,
    )
    tuner = tune.Tuner(
        trainable,
        param_space=_param_space(plan, skip),
        tune_config=tune.TuneConfig(
            metric=spec.search.metric, mode=spec.search.mode, scheduler=scheduler,
            search_alg=_search_alg(plan),
            num_samples=spec.search.num_samples if plan.is_search else 1,
            # The arm scheduler caps concurrency itself: Tune's cap counts paused trials
            # and would deadlock a rung waiting for seeds it never started.
            max_concurrent_trials=(None if spec.asha_unit == "arm"
                                   else spec.run.max_concurrent),
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname, trial_name_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=_tune_storage(plan),
            callbacks=[callback, CheckpointKeeper(_tune_experiment_dir(plan),
                                                  spec.run.checkpoints_to_keep)],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.run.max_failures),
            # Tune would delete a checkpoint before saving the state that stops naming it; the
            # keeper deletes instead, never one a saved state names.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )
    return tuner, callback


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


def _finished_trials(target: Path) -> list[FinishedTrial]:
    """What the sweep's Parquet tables (the system of record) have as finished, for the sinks."""
    from orchestrator.sinks.parquet import TRIALS_FILE, read_trials, table_exists

    if not table_exists(target, TRIALS_FILE):
        return []
    cols = ["trial_key", "arm", "seed", "status", "metric_best", "wall_time_s"]
    rows = read_trials(target, decode_config=False, columns=cols)

    def number(value: Any) -> float | None:           # pandas gives NaN for a missing value
        return None if value is None or value != value else float(value)

    return [FinishedTrial(key=r.trial_key, arm=r.arm, seed=int(r.seed), status=r.status,
                          metric_best=number(r.metric_best), wall_time_s=number(r.wall_time_s))
            for r in rows.itertuples()]


def storage_problems(plan: Plan) -> list[str]:
    """The sweep's folders that cannot take a write now (full, read-only, gone): one line each,
    naming the folder and the system's reason. Tables written before such a fault are whole:
    every write is a temporary file renamed over the target."""
    folders = [sweep_dir(plan)]
    location = plan.spec.run.tune_storage
    if location is None or not is_uri(location):
        folders.append(Path(_tune_experiment_dir(plan)))
    problems = []
    for folder in dict.fromkeys(folders):
        probe = folder / f".write-probe-{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as f:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            problems.append(f"cannot write to {folder}: {exc.strerror or exc}")
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
    return problems


def _sigterm_as_sigint(signum: int, frame: Any) -> None:
    """SIGTERM (what `timeout`, batch schedulers and `ray stop` send) stops the sweep the way
    Ctrl-C does: Tune saves its state and stops the trials (a second signal stops at once)."""
    signal.raise_signal(signal.SIGINT)


def _resolved_spec(plan: Plan) -> dict[str, Any]:
    """What spec.yaml and the MLflow parent run record: the spec, --smoke, and the arms."""
    out = plan.spec.to_dict()
    out["smoke"] = plan.smoke
    out["source"] = plan.source
    out["plan"] = {
        "arms": {a.name: {"overrides": dict(a.overrides), "aliases": list(a.aliases),
                          "factors": dict(a.factors), "reference": plan.references.get(a.name)}
                 for a in plan.arms},
        "protected": list(plan.protected),
        "asha_unit": plan.spec.asha_unit,
        "trials": [{"key": t.key, "arm": t.arm, "seed": t.seed} for t in plan.trials],
    }
    return out
