"""Every reach of this package into Ray's internals, in one place, checked against Ray 2.60.

The runner needs a few things Ray Tune has no public API for. Each function or table here is one
such reach, with the Ray code it depends on named in its docstring or comment:

- `restored_run_parts`: `Tuner.restore` rebuilds the callbacks and the scheduler from the saved
  `tuner.pkl` and takes neither as an argument, so the only way to the instances a restored sweep
  runs is the Tuner's `_local_tuner` (its run config and `_tune_config`). A fresh Tuner needs no
  reach: the runner built its callback and scheduler and keeps them.
- `asha_judging`, `asha_pending_rung`: Ray's ASHA returns STOP without saying at which rung or
  cutoff; RecordingASHA asks the trial's bracket (`_trial_info`, `_Bracket._rungs`, `cutoff`)
  before Ray decides, and reads the scheduler's `_time_attr`, `_max_t`, `_mode`, `_metric_op`.
- `tune_result_keys`: the keys Tune adds to every result (`ray.tune.result.AUTO_RESULT_KEYS`,
  which Ray does not export, and Tune's bookkeeping keys), so that the rest are the metrics.
- `published_node_groups`: the node types the autoscaler published in the GCS, read through
  `ray._private.state.state.get_cluster_config()` (GlobalState; no public API has them).
- `saved_checkpoint_paths`: which checkpoint each trial of a saved experiment state resumes
  from (Tune's state JSON, with Ray Train's checkpoint manager pickled inside), so that the
  checkpoint keeper never deletes one a restore needs.
- `preloading_workers`, `trials_on_preloaded_workers`: the system config by which a local Ray's
  workers import torch, timm and the models as they start, before any trial is placed on them,
  and the runtime env table of Tune's that kept trials off those workers.
- `ENV_SWITCHES`, `QUIET_LOGGERS`, `quiet_ray`: the environment variables and logger names by
  which the driver turns off Tune's console output, loggers and warnings, all process-wide.

`tests/test_ray_compat.py` checks each of them against the installed Ray, by behaviour where Ray
allows it (an ASHA fed results, a Tuner really restored, a cluster config really published), so
a Ray upgrade that moves one fails there, by name, not as a silently wrong stop reason or a lost
callback. Importing this module with a Ray outside `TESTED_RAY` warns.

Not reaches, so not here: the public `TrialScheduler` interface that ArmScheduler implements
(including the `metric` and `supports_buffered_results` properties Tune reads) and the
`Trial` methods Tune's own schedulers and loggers call (`set_status`, `init_local_path`).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, NamedTuple

import ray
from ray.tune.execution import class_cache
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.utils.serialization import TuneFunctionDecoder

if TYPE_CHECKING:
    from ray.tune import Callback, Tuner
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

__all__ = [
    "ENV_SWITCHES",
    "QUIET_LOGGERS",
    "TESTED_RAY",
    "AshaJudging",
    "EnvSwitch",
    "NodeGroup",
    "apply_env_switches",
    "asha_judging",
    "asha_pending_rung",
    "check_ray_version",
    "preloading_workers",
    "trials_on_preloaded_workers",
    "published_node_groups",
    "quiet_ray",
    "restored_run_parts",
    "saved_checkpoint_paths",
    "tune_result_keys",
]

# Ray versions whose internals this module was checked against (internals carry no promise, not
# even across patch releases: the whole version counts).
TESTED_RAY = ("2.60.0",)


def check_ray_version(version: str | None = None) -> bool:
    """True if `version` (default: the installed Ray) is one this module was checked against;
    otherwise warn, naming the test that checks every reach."""
    version = version or ray.__version__
    ok = version in TESTED_RAY
    if not ok:
        warnings.warn(
            f"orchestrator reaches into Ray internals checked against Ray "
            f"{', '.join(TESTED_RAY)} but Ray {version} is installed; run "
            f"tests/test_ray_compat.py before trusting resumed sweeps, ASHA stop reasons and the "
            f"cluster capacity check", UserWarning, stacklevel=2)
    return ok


# ------------------------------------------------------------------------------ restoring a Tuner

def restored_run_parts(tuner: Tuner) -> tuple[list[Callback], TrialScheduler | None]:
    """(callbacks, scheduler) that a Tuner from `Tuner.restore` will run.

    Restore unpickles the RunConfig and the TuneConfig from `tuner.pkl`
    (`TunerInternal._restore_from_path_or_uri`), so these are new instances, not the ones the
    first driver built, and `Tuner.restore` accepts neither callbacks nor a scheduler in their
    place. `Tuner._local_tuner` is the TunerInternal that `fit()` hands both to `tune.run`
    (`_fit_resume`: `callbacks=self._run_config.callbacks`, `scheduler=self._tune_config
    .scheduler`). Through Ray Client the Tuner lives in an actor and there is none.
    """
    local = getattr(tuner, "_local_tuner", None)
    if local is None:
        raise RuntimeError("the restored Tuner runs in a Ray Client actor, not in this process: "
                           "its callbacks and scheduler cannot be reached")
    return list(local.get_run_config().callbacks or ()), local._tune_config.scheduler


# ------------------------------------------------------------------------------------------- ASHA

class AshaJudging(NamedTuple):
    """What an ASHAScheduler judges a result by (`AsyncHyperBandScheduler.__init__` and
    `set_search_properties`)."""
    time_attr: str              # the result key that counts time (rungs are milestones of it)
    max_t: float                # results at or past it are not judged at a rung
    metric: str | None          # None until Tune passes TuneConfig's metric
    mode: str | None            # "min" / "max"; None until Tune passes TuneConfig's mode
    sign: float | None          # Ray compares sign * value with the cutoff: +1 max, -1 min


def asha_judging(scheduler: ASHAScheduler) -> AshaJudging:
    """The scheduler's time attribute, max_t, metric (the public `metric` property), mode and
    sign (`_metric_op`)."""
    return AshaJudging(time_attr=scheduler._time_attr, max_t=scheduler._max_t,
                       metric=scheduler.metric, mode=scheduler._mode,
                       sign=scheduler._metric_op)


def asha_pending_rung(scheduler: ASHAScheduler, trial_id: str, t: float
                      ) -> tuple[int, float | None] | None:
    """(1-based rung number, cutoff) at which the trial's result at time `t` is about to be
    judged, or None when it is judged at none; call it before `on_trial_result`.

    Mirrors `_Bracket.on_result` with `stop_last_trials=True` (Ray's default, the runner's):
    the first rung, walking `_rungs` from the highest milestone down, that `t` has reached and
    that has no value of this trial yet; its cutoff is `_Bracket.cutoff` of the values recorded
    there (in Ray's sign: `sign * value`, see AshaJudging), None while there are none. Rungs
    are numbered from the lowest milestone, rung 1.
    """
    bracket = scheduler._trial_info.get(trial_id)
    if bracket is None:
        return None
    ascending = sorted(milestone for milestone, _ in bracket._rungs)
    for milestone, recorded in bracket._rungs:          # descending milestones, as Ray walks
        if t < milestone or trial_id in recorded:
            continue
        cutoff = bracket.cutoff(recorded)
        return ascending.index(milestone) + 1, (None if cutoff is None else float(cutoff))
    return None


# --------------------------------------------------------------------------- saved experiment state

def saved_checkpoint_paths(state_text: str) -> dict[str, str | None]:
    """Trial id -> the checkpoint (a path on the storage filesystem) that a restore from this
    experiment state resumes the trial from, None for a trial saved without one.

    The state is `TuneController.save_to_dir`'s JSON: `trial_data` holds one pair of JSON strings
    per trial (the trial, its run metadata); the run metadata's `checkpoint_manager` is Ray
    Train's `_CheckpointManager`, embedded as a cloudpickle payload that Tune's own
    `TuneFunctionDecoder` decodes only when told to trust it (the file is this sweep's own), and
    restore takes its `latest_checkpoint_result` (`Trial.checkpoint`). Raises ValueError on a
    state that is not whole.
    """
    decoder = TuneFunctionDecoder(allow_cloudpickle=True)
    paths: dict[str, str | None] = {}
    for trial_json, metadata_json in json.loads(state_text)["trial_data"]:
        manager = decoder.decode(metadata_json)["checkpoint_manager"]
        latest = manager.latest_checkpoint_result
        paths[json.loads(trial_json)["trial_id"]] = (
            None if latest is None or latest.checkpoint is None else latest.checkpoint.path)
    return paths


# ------------------------------------------------------------------------------ worker start-up

def preloading_workers(modules: tuple[str, ...]) -> dict[str, object]:
    """`ray.init(_system_config=...)` for a local Ray whose Python workers import `modules` when
    they start (RayConfig `preload_python_modules`, which the raylet passes to
    `default_worker.py` as `--worker-preload-modules`; no public API has it). The raylet starts
    one worker per CPU with the cluster, while the driver plans; a trial's actor is placed on
    one of them only if its runtime env is the job's (see `trials_on_preloaded_workers`)."""
    return {"preload_python_modules": list(modules)}


def trials_on_preloaded_workers() -> None:
    """Let Tune's trial actors use the workers a local Ray started (and preloaded) with the
    cluster. Tune gives every trainable actor the runtime env `{"env_vars": DEFAULT_ENV_VARS}`
    plus the variables it propagates from the driver's environment
    (`ray.tune.execution.class_cache`); `DEFAULT_ENV_VARS` is `{"PL_DISABLE_FORK": "1"}`, for
    PyTorch Lightning, which no trial here uses. Ray places an actor only on a worker started
    for the same runtime env, so with it every trial waited for a fresh worker to start and
    import torch and timm, while the preloaded ones stayed idle (measured: benchmarks/RESULTS.md,
    "worker start-up"). Empties that table in this process; a variable Tune propagates (AWS
    keys, Ray Train's) still goes to the trials, which then start on fresh workers as before."""
    class_cache.DEFAULT_ENV_VARS.clear()


# --------------------------------------------------------------------------------------- results

def tune_result_keys() -> frozenset[str]:
    """The keys Tune puts in a trial's result besides what the trainable reported: the
    auto-filled ones (`ray.tune.result.AUTO_RESULT_KEYS`: iteration, times, host, pid, config,
    ...) and the controller's bookkeeping (`done`, `trial_id`, `experiment_tag`, ...)."""
    return frozenset(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag",
                                          "should_checkpoint", "episodes_this_iter",
                                          "timesteps_this_iter"}


# ------------------------------------------------------------------------------ the cluster's GCS

class NodeGroup(NamedTuple):
    """One node type the autoscaler published (`autoscaler_pb2.NodeGroupConfig`)."""
    name: str
    resources: dict[str, float]
    max_count: int              # -1: unbounded


def published_node_groups() -> list[NodeGroup] | None:
    """The node types the cluster's autoscaler published in the GCS, or None when it published
    none (a local Ray, a cluster grown by hand) or they cannot be read.

    `ray._private.state.state` is Ray's GlobalState; `get_cluster_config()` reads the
    `autoscaler_pb2.ClusterConfig` the autoscaler reports, from the GCS's internal KV store
    (namespace `__autoscaler`, key `__autoscaler_cluster_config`); Ray connected first.
    """
    try:  # imported here: a private module, whose absence means "not known", not a failure
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an internal API: missing or changed means "not known"
        return None
    if config is None or not config.node_group_configs:
        return None
    return [NodeGroup(g.name, {k: float(v) for k, v in g.resources.items()}, int(g.max_count))
            for g in config.node_group_configs]


# ------------------------------------------------------------------------- quiet, process-wide

class EnvSwitch(NamedTuple):
    name: str
    value: str
    force: bool      # set even when the environment has it already (else: only when unset)
    read_in: str     # the Ray module whose source names it (the test checks it still does)


# What each switch does in Ray 2.60. The driver's sinks own the console and report failures.
ENV_SWITCHES: tuple[EnvSwitch, ...] = (
    # `ray.init` / `ray start` send no usage statistics (ray._common.usage.usage_lib reads the
    # name from usage_constants.USAGE_STATS_ENABLED_ENV_VAR); a user's own setting is kept.
    EnvSwitch("RAY_USAGE_STATS_ENABLED", "0", False, "ray._common.usage.usage_constants"),
    # tune.run adds no CSV, JSON and TensorBoard logger callbacks to every trial
    # (ray.tune.utils.callback._create_default_callbacks: anything but "1" adds them); always.
    EnvSwitch("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1", True, "ray.tune.utils.callback"),
    # "0": tune.run takes the legacy progress reporter, silenced by RunConfig(verbose=0),
    # instead of the newer output engine (ray.tune.experimental.output.get_air_verbosity
    # returns None); a user's own setting is kept.
    EnvSwitch("RAY_AIR_NEW_OUTPUT", "0", False, "ray.tune.experimental.output"),
    # ExperimentState warns when forced snapshots of the experiment state come closer than this
    # many seconds apart (default 5; 0 switches the warning off). NB: a larger value widens that
    # window; the warning is a `ray.tune` WARNING, which QUIET_LOGGERS drops in any case.
    EnvSwitch("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "60", False,
              "ray.tune.execution.experiment_state"),
    # "0": TuneController._trial_task_failure logs no traceback per failed trial; the sinks
    # report the failure (status, the error's last line) and Tune keeps the traceback in the
    # trial's error.txt.
    EnvSwitch("TUNE_PRINT_ALL_TRIAL_ERRORS", "0", False, "ray.tune.execution.tune_controller"),
    # Set at all (any value): Worker.raise_errors prints no "Unhandled error" with the same
    # traceback again when a failed trial's result object is dropped at the end.
    EnvSwitch("RAY_IGNORE_UNHANDLED_ERRORS", "1", False, "ray._private.worker"),
)

# Logger name -> level. Ray's modules log under their module names (logging.getLogger(__name__)),
# so a renamed module silently un-quiets its logger (the test checks each module is there).
QUIET_LOGGERS: dict[str, int] = {
    # Ray's package loggers: errors only (the sinks own the console).
    "ray": logging.ERROR,
    "ray.tune": logging.ERROR,
    "ray.train": logging.ERROR,
    "ray.data": logging.ERROR,
    # "Saving experiment state to storage at ... failed" with a traceback, at every save while
    # the storage cannot be written: the runner's summary names the folder instead
    # (runner.storage_problems).
    "ray.tune.execution.experiment_state": logging.CRITICAL,
    # "Trials did not complete: [...]" (tune.run): the summary names the failed and interrupted
    # trials.
    "ray.tune.tune": logging.CRITICAL,
}


def apply_env_switches(environ: MutableMapping[str, str] | None = None) -> None:
    """Set ENV_SWITCHES in `environ` (default: this process's environment, which the trials'
    workers inherit when the driver starts Ray)."""
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    for switch in ENV_SWITCHES:
        if switch.force:
            env[switch.name] = switch.value
        else:
            env.setdefault(switch.name, switch.value)


def quiet_ray() -> None:
    """ENV_SWITCHES and QUIET_LOGGERS, applied to this process: call it before `ray.init`."""
    apply_env_switches()
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


check_ray_version()
