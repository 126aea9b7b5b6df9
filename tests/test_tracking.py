"""The MLflow sink: one child run per trial, reused on replay, tags that agree with Parquet."""

from __future__ import annotations

import shlex
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.sinks.mlflow import MlflowSink
from orchestrator.sinks.mlflow_store import default_tracking_uri, mlflow_ui_command
from orchestrator.sinks.parquet import ParquetSink, read_trials

try:
    from sink_scenario import METRIC, curve, feed, scenario
    from test_tables import check_commit, installed_versions
except ImportError:  # tests/ collected as a package
    from tests.sink_scenario import METRIC, curve, feed, scenario
    from tests.test_tables import check_commit, installed_versions


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A sweep fed to both sinks, then replayed by fresh sinks as a `--resume` driver would."""
    storage = tmp_path_factory.mktemp("sweeps")
    sweep_dir = storage / "unit"
    first = MlflowSink()  # default store: <storage>/mlflow.db, unless MLFLOW_TRACKING_URI is set
    if first.tracking_uri is None:
        first.tracking_uri = f"sqlite:///{storage / 'mlflow.db'}"
    feed([first, ParquetSink()], sweep_dir)
    replay = MlflowSink(first.tracking_uri)
    feed([replay, ParquetSink()], sweep_dir)
    from mlflow import MlflowClient

    client = MlflowClient(first.tracking_uri)
    runs = client.search_runs([first.experiment_id], max_results=1000)
    return {"sink": replay, "first": first, "client": client, "runs": runs, "dir": sweep_dir}


def _children(recorded):
    return [r for r in recorded["runs"] if r.data.tags.get("sweep_role") == "trial"]


def test_one_parent_and_one_child_run_per_trial_key_after_replay(recorded):
    assert recorded["sink"].experiment_id == recorded["first"].experiment_id
    assert recorded["sink"].parent_run_id == recorded["first"].parent_run_id
    parents = [r for r in recorded["runs"] if r.data.tags.get("sweep_role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = _children(recorded)
    keys = sorted(r.data.tags["trial_key"] for r in children)
    assert keys == ["k_base", "k_fail", "k_relu"]
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    names = {r.data.tags["trial_key"]: r.info.run_name for r in children}
    assert names == {"k_base": "baseline/seed0", "k_relu": "act=relu6/seed0",
                     "k_fail": "act=hs/seed1"}


def test_tags_and_statuses_agree_with_the_parquet_rows(recorded):
    trials = read_trials(recorded["dir"]).set_index("trial_key")
    status_of = {"completed": "FINISHED", "stopped": "FINISHED", "failed": "FAILED"}
    for run in _children(recorded):
        tags = run.data.tags
        row = trials.loc[tags["trial_key"]]
        assert tags["arm"] == row["arm"]
        assert tags["seed"] == str(row["seed"])
        assert tags["backbone"] == row["backbone"]
        assert tags["status"] == row["status"]
        assert tags["stop_reason"] == row["stop_reason"]
        assert tags["epochs_run"] == str(row["epochs_run"])
        assert tags["design"] == "ofat"
        # ASHA-stopped looks FINISHED to MLflow; the status tag tells it apart.
        assert run.info.status == status_of[row["status"]]


def test_params_are_flattened_and_epochs_logged_once_with_step_epoch(recorded):
    client = recorded["client"]
    runs = {r.data.tags["trial_key"]: r for r in _children(recorded)}
    relu = runs["k_relu"]
    assert relu.data.params["model.locality.act"] == "relu6"
    assert relu.data.params["train.epochs"] == "3"
    assert runs["k_fail"].data.params["model.locality.layers"] == "[1, 2]"
    assert relu.data.metrics["params"] == 1300 and relu.data.metrics["macs"] == 60000
    assert relu.data.metrics[f"best/{METRIC}"] == pytest.approx(0.6)
    # Reported every epoch by the trainer, logged once per run.
    assert len(client.get_metric_history(relu.info.run_id, "params")) == 1
    history = client.get_metric_history(runs["k_base"].info.run_id, METRIC)
    # Fed twice (first driver + replay), in MLflow once per epoch.
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(1, 0.6), (2, 0.7), (3, 0.8)]
    assert len(client.get_metric_history(runs["k_fail"].info.run_id, "train/loss")) == 2


def test_parent_run_has_the_spec_and_provenance(recorded, tmp_path):
    client = recorded["client"]
    parent_id = recorded["sink"].parent_run_id
    tags = client.get_run(parent_id).data.tags
    assert tags["sweep_name"] == "unit" and tags["metric"] == METRIC
    assert {k: tags[f"version.{k}"] for k in installed_versions()} == installed_versions()
    # The same commit as the Parquet rows (the tag holds the text "None" outside a repository).
    commit = read_trials(recorded["dir"])["git_commit"].iloc[0]
    assert tags["git_commit"] == ("None" if pd.isna(commit) else commit)
    check_commit(commit)
    path = client.download_artifacts(parent_id, "spec.yaml", str(tmp_path))
    assert "search:" in Path(path).read_text()


def test_interrupted_sweep_marks_open_runs_killed_and_mlflow_stays_quiet(tmp_path, capfd):
    infos, epochs, outcomes = scenario()
    # Synchronous here (the module fixture covers the background thread).
    sink = MlflowSink(f"sqlite:///{tmp_path / 'mlflow.db'}", background=False)
    # k_fail never finishes: the driver is stopped while it runs.
    feed(sink, tmp_path / "unit", (infos, epochs, outcomes[:2]), finish=False)
    sink.finish(interrupted=True)
    out, err = capfd.readouterr()
    assert out == "" and err == "", "MLflow wrote to the terminal"
    from mlflow import MlflowClient

    client = MlflowClient(sink.tracking_uri)
    run = client.get_run(sink._runs["k_fail"])
    assert run.info.status == "KILLED" and run.data.tags["status"] == "interrupted"
    parent = client.get_run(sink.parent_run_id)
    assert parent.info.status == "KILLED" and parent.data.tags["sweep_status"] == "interrupted"
    # The resumed driver finishes it in the same run.
    resumed = MlflowSink(sink.tracking_uri)
    feed(resumed, tmp_path / "unit", ([infos[2]], curve("k_fail", 2), [outcomes[2]]))
    assert resumed._runs["k_fail"] == sink._runs["k_fail"]
    run = client.get_run(sink._runs["k_fail"])
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"


def test_default_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_mlflow_ui_command_is_accepted_by_mlflow_ui(tmp_path):
    from mlflow.cli import cli

    uri = f"sqlite:///{tmp_path}/my sweeps/mlflow.db"
    cmd = mlflow_ui_command(uri)
    env, prog, sub, *args = shlex.split(cmd)
    assert env == "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" and (prog, sub) == ("mlflow", "ui")
    # Parse (not run) the arguments with mlflow's own click command.
    ctx = cli.get_command(None, "ui").make_context("ui", args)  # `ui` aliases `server`
    assert ctx.params["backend_store_uri"] == uri
    assert ctx.params["host"] == "127.0.0.1" and str(ctx.params["workers"]) == "1"


def test_an_mlflow_error_is_raised_from_the_next_call_with_its_cause(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    sink = MlflowSink(f"sqlite:///{blocker}/mlflow.db")   # its folder cannot be created
    sink.start(sweep_name="unit", storage_dir=str(tmp_path / "unit"), spec={}, metric=METRIC,
               mode="max", total_trials=1)
    with pytest.raises(RuntimeError, match="MlflowSink failed: FileExistsError"):
        sink.finish()


def test_each_epoch_records_the_node_that_trained_it_and_mlflow_lists_them_in_order(tmp_path):
    # A trial that lost its node after epoch 2 and was retried on another, then resumed by a new
    # driver on a third: Parquet keeps each epoch's node, MLflow's `ray.nodes` tag lists all three.
    from mlflow import MlflowClient

    from orchestrator.sinks.parquet import read_epochs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    infos, _, _ = scenario()
    info = infos[0]
    where = {1: "10.0.0.1:aaaa0001", 2: "10.0.0.1:aaaa0001", 3: "10.0.0.2:bbbb0002",
             4: "10.0.0.3:cccc0003"}
    for epochs in ([1, 2, 3], [4]):                  # the first driver, then a --resume
        sinks = [ParquetSink(), MlflowSink(uri)]
        for sink in sinks:
            sink.start(sweep_name="nodes", storage_dir=str(tmp_path / "nodes"),
                       spec={"name": "nodes"}, metric=METRIC, mode="max", total_trials=1)
            sink.trial_started(info)
            for epoch in epochs:
                sink.epoch(info.key, epoch, {METRIC: 0.1 * epoch}, node=where[epoch])
            sink.finish(interrupted=epochs != [4])
    got = read_epochs(tmp_path / "nodes").set_index("epoch")["node"].to_dict()
    assert got == where
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("nodes")
    run, = [r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("sweep_role") == "trial"]
    assert run.data.tags["ray.nodes"] == "10.0.0.1:aaaa0001 10.0.0.2:bbbb0002 10.0.0.3:cccc0003"


def _count_epoch_batches(monkeypatch) -> list[int]:
    """The number of points in each log_batch call that carries epochs (step > 0)."""
    from mlflow import MlflowClient

    calls: list[int] = []
    real = MlflowClient.log_batch

    def counting(self, run_id, *args, **kwargs):
        metrics = kwargs.get("metrics", args[0] if args else ())
        if any(m.step > 0 for m in metrics):
            calls.append(len(metrics))
        return real(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", counting)
    return calls


def test_epochs_are_logged_in_batches_on_a_timer_and_before_the_trial_ends(tmp_path, monkeypatch):
    """Each epoch is one SQLite transaction otherwise: the sink logs what arrived every
    epoch_flush_s seconds (so the UI follows a running trial) and all of it at the trial's end."""
    import time

    from mlflow import MlflowClient

    calls = _count_epoch_batches(monkeypatch)
    infos, _, outcomes = scenario()
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    for flush_s, name in ((0.5, "timer"), (3600.0, "at-end")):
        calls.clear()
        sink = MlflowSink(uri, epoch_flush_s=flush_s)
        sink.start(sweep_name=name, storage_dir=str(tmp_path / name), spec={"name": name},
                   metric=METRIC, mode="max", total_trials=1)
        sink.trial_started(infos[0])
        for key, epoch, metrics in curve(infos[0].key, 3):
            sink.epoch(key, epoch, metrics)
        # The sink builds a new store on its own thread and links it into place whole; open it
        # once it is there (two stores migrating at once in one process trip over alembic's
        # module-level state).
        deadline = time.monotonic() + 120
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        client = MlflowClient(uri)
        if name == "timer":
            # The trial has not ended: the timer alone brings its epochs to MLflow.
            deadline = time.monotonic() + 30
            history: list = []
            while len(history) < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
                run_id = sink._runs.get(infos[0].key)
                history = client.get_metric_history(run_id, METRIC) if run_id else []
            assert sorted(m.step for m in history) == [1, 2, 3]
            assert 1 <= len(calls) <= 2        # the three epochs arrived within one period
        sink.trial_finished(outcomes[0])
        sink.finish()
        history = client.get_metric_history(sink._runs[infos[0].key], METRIC)
        assert sorted((m.step, round(m.value, 6)) for m in history) == [(1, 0.6), (2, 0.7),
                                                                         (3, 0.8)]
        if name == "at-end":
            assert calls == [3 * 3]            # one batch: 3 epochs x (metric, loss, lr)


# Run in a child process: SIGKILL itself the moment MLflow's migration of a new store creates a
# table copy (`_alembic_tmp_<table>`), i.e. in the middle of building the store, as a driver
# killed then would be. argv: "mlflow" (open the store as MLflow does) or "ours" (a sweep's
# MLflow sink starting), then the store's path.
_KILLED_MID_MIGRATION = """
import os, signal, sys
from pathlib import Path
from sqlalchemy import event
from sqlalchemy.engine import Engine

@event.listens_for(Engine, "before_cursor_execute")
def _kill(conn, cursor, statement, *args):
    if "CREATE TABLE _alembic_tmp_" in statement:
        os.kill(os.getpid(), signal.SIGKILL)

how, db = sys.argv[1], Path(sys.argv[2])
if how == "mlflow":
    from mlflow import MlflowClient
    MlflowClient(f"sqlite:///{db}").search_experiments()
else:
    from orchestrator.sinks.mlflow import MlflowSink
    MlflowSink(f"sqlite:///{db}", background=False).start(
        sweep_name="killed", storage_dir=str(db.parent / "killed"), spec={}, metric="val/top1",
        mode="max", total_trials=1)
"""


@pytest.mark.system
@pytest.mark.parametrize("cache", ["template", "no-cache-folder"])
def test_a_driver_killed_while_mlflow_builds_its_store_leaves_no_broken_store(tmp_path, cache,
                                                                                monkeypatch):
    """Killed mid-migration, MLflow's own way of creating a store leaves one that every later
    open fails on; the sink's way leaves no store, and the next driver builds a whole one (and
    removes the killed driver's copy). The kill comes while MLflow builds the empty store kept
    as the template, or, where no cache folder can be had, the store itself."""
    import os
    import signal
    import subprocess
    import sys

    from mlflow import MlflowClient
    from sqlalchemy.exc import OperationalError

    from orchestrator.sinks.mlflow_store import CACHE_ENV, store_template

    if cache == "template":
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    else:
        (tmp_path / "file").write_text("a file where the cache folder would be")
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "file" / "cache"))
    template = store_template()

    def killed_while_creating(how: str, db: Path) -> None:
        proc = subprocess.run([sys.executable, "-c", _KILLED_MID_MIGRATION, how, str(db)],
                              capture_output=True, text=True, timeout=300, env=os.environ)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    def copies(folder: Path, name: str) -> list[Path]:
        return [p for p in folder.iterdir() if p.name.startswith(f".{name}.")] \
            if folder.is_dir() else []

    # The failure the sink avoids, as the installed MLflow has it: the half-migrated store fails
    # every later open (here on a step the killed driver had applied but not recorded; the
    # suite once met "table _alembic_tmp_experiments already exists").
    plain = tmp_path / "plain" / "mlflow.db"
    plain.parent.mkdir()
    killed_while_creating("mlflow", plain)
    for _ in range(2):
        with pytest.raises(OperationalError):
            MlflowClient(f"sqlite:///{plain}").search_experiments()

    # The sink's store: nothing at the store's path nor at the template's, only the killed
    # driver's copy beside the one MLflow was building.
    storage = tmp_path / "sweeps"
    db = storage / "mlflow.db"
    storage.mkdir()
    killed_while_creating("ours", db)
    assert not db.exists() and not template.exists()
    building = (template.parent, template.name) if cache == "template" else (storage, db.name)
    assert len(copies(*building)) == 1 and len(list(storage.iterdir())) == (cache != "template")

    # The next driver's sink builds a whole store and logs to it.
    sink = MlflowSink(f"sqlite:///{db}", background=False)
    sink.start(sweep_name="after-kill", storage_dir=str(storage / "after-kill"), spec={},
               metric="val/top1", mode="max", total_trials=1)
    assert MlflowClient(f"sqlite:///{db}").get_experiment_by_name("after-kill") is not None
    assert db.is_file() and not copies(storage, db.name) and not copies(*building)
    assert template.is_file() == (cache == "template")
