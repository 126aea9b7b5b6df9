"""Every reach into Ray internals (orchestrator/tune/ray_compat.py), checked against the installed
Ray.

ASHA's rung and cutoff are checked against the decisions Ray's own ASHAScheduler takes; the
restored callback and scheduler by restoring a real Tuner and seeing which instances Tune then
runs; Tune's result keys against the results Tune really delivers; the autoscaler's node types
against a cluster config published in a real GCS; the environment switches and logger names
against the Ray source that reads them. A Ray upgrade that moves one of them fails here, by name.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.utils.mock_trainable import MyTrainableClass

from orchestrator.tune import ray_compat as compat

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_ray_is_a_checked_version_and_others_warn(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compat.check_ray_version()
    monkeypatch.setattr(ray, "__version__", "2.61.0")
    with pytest.warns(UserWarning, match=r"Ray 2\.60\.0 but Ray 2\.61\.0 .*test_ray_compat"):
        assert not compat.check_ray_version()


# ------------------------------------------------------------------------------------------- ASHA

def _fake_trials(ids):
    """Trial stand-ins as Ray's own scheduler tests make them (the scheduler reads trial_id)."""
    return [Trial("__fake", config={}, stub=True, trial_id=k) for k in ids]


def test_asha_judging_reads_what_tune_configured():
    asha = ASHAScheduler(time_attr="epoch", max_t=8, grace_period=1, reduction_factor=2)
    assert compat.asha_judging(asha) == ("epoch", 8, None, None, None)
    # What Tune does with TuneConfig(metric=..., mode=...) before the first trial.
    assert asha.set_search_properties("val/loss", "min")
    assert compat.asha_judging(asha) == ("epoch", 8, "val/loss", "min", -1.0)
    # max_t as Ray uses it: a result at max_t stops even the best trial, one before does not.
    a, b = _fake_trials(["a", "b"])
    for t in (a, b):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, a, {"epoch": 7, "val/loss": 0.1}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, b, {"epoch": 8, "val/loss": 0.0}) == TrialScheduler.STOP


# Six trials report epochs 1-4 in turn (a loss: lower is better).
CURVES = {"t0": [1.0, 0.5, 0.4, 0.3], "t1": [1.1, 0.45, 0.3, 0.2], "t2": [1.2, 0.9, 0.8, 0.7],
          "t3": [0.9, 0.95, 0.2, 0.1], "t4": [2.0, 2.0, 2.0, 2.0], "t5": [1.0, 0.4, 1.4, 0.9]}
# Milestones 1, 2, 4 are rungs 1, 2, 3; epoch 3 reaches no new rung.
RUNG_AT = {1: 1, 2: 2, 3: None, 4: 3}


@pytest.mark.parametrize("mode", ["min", "max"])
def test_asha_pending_rung_is_where_ray_judges(mode):
    """Before each result: the rung Ray is about to judge it at and that rung's cutoff (the
    median, for reduction factor 2, of the values recorded there so far, in Ray's sign); Ray
    stops the trial exactly when its value falls below that cutoff."""
    sign = -1.0 if mode == "min" else 1.0
    asha = ASHAScheduler(time_attr="epoch", metric="m", mode=mode, max_t=8, grace_period=1,
                         reduction_factor=2)
    trials = _fake_trials(CURVES)
    for t in trials:
        asha.on_trial_add(None, t)
    recorded: dict[int, list[float]] = {1: [], 2: [], 3: []}
    stopped: dict[str, int] = {}
    for epoch in (1, 2, 3, 4):
        for t in trials:
            if t.trial_id in stopped:
                continue
            # A loss in min mode; the same curves negated as a score in max mode.
            value = -sign * CURVES[t.trial_id][epoch - 1]
            pending = compat.asha_pending_rung(asha, t.trial_id, epoch)
            rung = RUNG_AT[epoch]
            if rung is None:
                assert pending is None
            else:
                seen = recorded[rung]
                assert pending == (rung, pytest.approx(np.nanpercentile(seen, 50))
                                   if seen else None)
            action = asha.on_trial_result(None, t, {"epoch": epoch, "m": value})
            stops = pending is not None and pending[1] is not None and sign * value < pending[1]
            assert action == (TrialScheduler.STOP if stops else TrialScheduler.CONTINUE)
            if stops:
                stopped[t.trial_id] = epoch
            if rung is not None:
                recorded[rung].append(sign * value)
    assert set(stopped.values()) >= {1, 2}, stopped      # the curves stop trials at two rungs
    assert compat.asha_pending_rung(asha, "unknown", 1) is None


# ---------------------------------------------------------------------------- a restored Tuner

class Recorder(tune.Callback):
    """Keeps every result Tune delivers to this instance."""

    def __init__(self) -> None:
        self.results: list[dict] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.append(dict(result))


class CountingScheduler(FIFOScheduler):
    """FIFO that keeps the ids of the trials Tune adds to this instance."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[str] = []

    def on_trial_add(self, tune_controller, trial):
        self.added.append(trial.trial_id)


@pytest.fixture(scope="module")
def restored(ray_session, tmp_path_factory):
    """Ray's mock trainable fails on purpose after its first (checkpointed) step; the Tuner is
    restored as the runner restores one (resume_errored) and the trial resumes to its end."""
    storage = tmp_path_factory.mktemp("tune")
    first_callback, first_scheduler = Recorder(), CountingScheduler()
    first = tune.Tuner(
        MyTrainableClass, param_space={"mock_error": True},
        tune_config=tune.TuneConfig(scheduler=first_scheduler),
        run_config=tune.RunConfig(
            name="exp", storage_path=str(storage), callbacks=[first_callback], verbose=0,
            stop={"training_iteration": 2},
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1)),
    ).fit()
    assert first.num_errors == 1
    tuner = tune.Tuner.restore(str(storage / "exp"), MyTrainableClass, resume_unfinished=True,
                               resume_errored=True)
    callbacks, scheduler = compat.restored_run_parts(tuner)
    grid = tuner.fit()
    return SimpleNamespace(first_callback=first_callback, first_scheduler=first_scheduler,
                           callbacks=callbacks, scheduler=scheduler, grid=grid)


def test_restored_run_parts_are_the_instances_tune_runs(restored):
    assert restored.grid.num_errors == 0
    [callback] = [c for c in restored.callbacks if isinstance(c, Recorder)]
    scheduler = restored.scheduler
    assert isinstance(scheduler, CountingScheduler)
    # New instances (unpickled from tuner.pkl) ...
    assert callback is not restored.first_callback
    assert scheduler is not restored.first_scheduler
    # ... that the resumed run delivered its result and its trial to; the first ones got no more.
    assert [r["training_iteration"] for r in callback.results] == [2]
    assert scheduler.added == restored.first_scheduler.added
    assert len(scheduler.added) == 1
    assert [r["training_iteration"] for r in restored.first_callback.results] == [1]


def test_tune_result_keys_are_every_key_tune_adds(restored):
    results = restored.first_callback.results + [
        r for c in restored.callbacks if isinstance(c, Recorder) for r in c.results]
    assert results
    keys = compat.tune_result_keys()
    for result in results:
        added = set(result) - {"episode_reward_mean"}     # what the mock trainable reports
        assert added <= keys, added - keys
        assert {"training_iteration", "trial_id", "done", "time_total_s"} <= added
    assert "episode_reward_mean" not in keys


# ------------------------------------------------------------------------------ the cluster's GCS

def test_published_node_groups_reads_what_the_autoscaler_published(ray_session):
    from ray._raylet import GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    from ray.core.generated import autoscaler_pb2
    from ray.experimental import internal_kv

    assert compat.published_node_groups() is None        # a local Ray: no autoscaler
    config = autoscaler_pb2.ClusterConfig()
    for name, resources, max_count in (("gpu_worker", {"CPU": 8, "GPU": 1}, 4),
                                       ("cpu_worker", {"CPU": 2}, -1)):
        group = config.node_group_configs.add()
        group.name, group.max_count = name, max_count
        group.resources.update(resources)
    # Where the GCS keeps the config an autoscaler reports (ReportClusterConfig).
    internal_kv._internal_kv_put(GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, config.SerializeToString(),
                                 namespace=GCS_AUTOSCALER_STATE_NAMESPACE)
    try:
        assert compat.published_node_groups() == [
            ("gpu_worker", {"CPU": 8.0, "GPU": 1.0}, 4), ("cpu_worker", {"CPU": 2.0}, -1)]
    finally:
        internal_kv._internal_kv_del(GCS_AUTOSCALER_CLUSTER_CONFIG_KEY,
                                     namespace=GCS_AUTOSCALER_STATE_NAMESPACE)
    assert compat.published_node_groups() is None


# ------------------------------------------------------------------------- quiet, process-wide

def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"Ray has no module {module}"
    return Path(spec.origin).read_text()


@pytest.mark.parametrize("switch", compat.ENV_SWITCHES, ids=lambda s: s.name)
def test_each_env_switch_is_still_read_by_ray(switch):
    assert switch.name in _source(switch.read_in)


def test_apply_env_switches_keeps_the_users_settings_except_forced_ones():
    env = {"RAY_AIR_NEW_OUTPUT": "1", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0"}
    compat.apply_env_switches(env)
    assert env == {**{s.name: s.value for s in compat.ENV_SWITCHES}, "RAY_AIR_NEW_OUTPUT": "1"}


# Messages the two CRITICAL loggers are there to silence.
SILENCED = {"ray.tune.execution.experiment_state": "Saving experiment state to storage at",
            "ray.tune.tune": "Trials did not complete"}


@pytest.mark.parametrize("name", list(compat.QUIET_LOGGERS))
def test_each_quiet_logger_is_a_ray_module_logging_under_its_name(name):
    source = _source(name)
    if not importlib.util.find_spec(name).submodule_search_locations:     # a module: its own
        assert "logging.getLogger(__name__)" in source
    if name in SILENCED:
        assert compat.QUIET_LOGGERS[name] == logging.CRITICAL
        assert SILENCED[name] in source


@pytest.mark.system
def test_tune_trials_start_on_the_preloaded_workers_only_with_tunes_env_table_emptied(tmp_path):
    # A Ray of its own (a subprocess: the suite shares one Ray session) that starts a worker with
    # the cluster and preloads `trainers` into every worker; a Tune trial reports its worker's
    # pid, and whether it had `trainers`. With Tune's runtime env table as Ray ships it, the
    # trial waits for a fresh worker (a pid that did not exist when the Tuner started); emptied,
    # it runs on the one the cluster started.
    script = tmp_path / "preload.py"
    script.write_text(
        "import json, os, sys, time, psutil, ray\n"
        "from ray import tune\n"
        "from orchestrator.tune.ray_compat import preloading_workers, trials_on_preloaded_workers\n"
        "def where():\n"
        "    tune.report({'pid': os.getpid(), 'had': 'trainers' in sys.modules})\n"
        "def shipped(config):\n"
        "    where()\n"
        "def emptied(config):\n"
        "    where()\n"
        "def workers():\n"
        "    # Ray's workers, under their process title (ray::IDLE until they run something).\n"
        "    out = set()\n"
        "    for p in psutil.Process().children(recursive=True):\n"
        "        try:\n"
        "            cmd = ' '.join(p.cmdline())\n"
        "        except psutil.Error:\n"
        "            continue\n"
        "        if cmd.startswith('ray::IDLE') or 'default_worker.py' in cmd:\n"
        "            out.add(p.pid)\n"
        "    return out\n"
        f"storage = {str(tmp_path / 'tune')!r}\n"
        "for probe in (shipped, emptied):\n"
        "    if probe is emptied:\n"
        "        trials_on_preloaded_workers()\n"
        "    ray.init(address='local', num_cpus=1, include_dashboard=False,\n"
        "             logging_level='ERROR',\n"
        "             _system_config=preloading_workers(('json', 'trainers')))\n"
        "    deadline = time.monotonic() + 120\n"
        "    while not (ray_workers := workers()) and time.monotonic() < deadline:\n"
        "        time.sleep(0.1)\n"
        "    grid = tune.Tuner(probe, run_config=tune.RunConfig(storage_path=storage,\n"
        "                                                        verbose=0)).fit()\n"
        "    m = grid[0].metrics\n"
        "    print(json.dumps([probe.__name__, m['pid'] in ray_workers, m['had']]),\n"
        "          file=sys.stderr)\n"
        "    ray.shutdown()\n")
    # Two Ray starts and a fresh worker's imports: minutes when other work starves Ray's niced
    # workers (two busy loops beside the suite).
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=800, cwd=ROOT, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stderr.splitlines() if line.startswith('["')]
    assert rows == [["shipped", False, True], ["emptied", True, True]], out.stderr[-3000:]
