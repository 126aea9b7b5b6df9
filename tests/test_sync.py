"""Parquet is the system of record: with the MLflow store unreachable for a whole sweep,
the sweep still runs every trial, writes every Parquet row, says so once and exits 1; then
`python -m orchestrator.sync` brings MLflow up to date from Parquet, exactly and repeatably (a
second sync adds nothing). A missing or unreadable table is bad input (exit 2, naming the file).
"""

import contextlib
import io
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.sweep import main
from orchestrator.sync import main as sync_main
from tiny_study import two_arm_spec

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def unsynced(ray_session, tmp_path_factory):
    """A sweep run while its MLflow store could not be opened (a sqlite file under /proc)."""
    tmp = tmp_path_factory.mktemp("unreachable")
    spec = tmp / "sync.yaml"
    spec.write_text(two_arm_spec("sync", "{resources_per_trial: {cpu: 1}, max_concurrent: 2}"))
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/no-mlflow-here/mlflow.db")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([str(spec), "--set", f"run.storage={tmp / 'sweeps'}"])
    finally:
        mp.undo()
    return tmp / "sweeps" / "sync", code, err.getvalue()


def test_the_sweep_goes_on_without_mlflow_and_says_so_once(unsynced):
    sweep, code, log = unsynced
    assert code == 1, log[-3000:]
    assert log.count("result sink error: MlflowSink.") == 1, log[-3000:]
    assert f"run python -m orchestrator.sync {sweep}" in log
    trials = pd.read_parquet(sweep / "trials.parquet")
    assert sorted(trials["status"]) == ["completed", "completed"]
    assert len(pd.read_parquet(sweep / "epochs.parquet")) == 6


def _mlflow_matches_parquet(sweep: Path, uri: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sync")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    children = {r.data.tags["trial_key"]: r for r in runs
                if r.data.tags.get("sweep_role") == "trial"}
    assert len(parents) == 1 and parents[0].data.tags["total_trials"] == "2"
    trials = pd.read_parquet(sweep / "trials.parquet")
    epochs = pd.read_parquet(sweep / "epochs.parquet")
    assert set(children) == set(trials["trial_key"])
    for row in trials.to_dict("records"):
        run = children[row["trial_key"]]
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"{row['arm']}/seed{row['seed']}"
        assert (run.data.tags["status"], run.data.tags["stop_reason"]) == \
            (row["status"], row["stop_reason"])
        assert run.data.params["train.epochs"] == "3"
        history = client.get_metric_history(run.info.run_id, "val/top1")
        curve = epochs[epochs["trial_key"] == row["trial_key"]].sort_values("epoch")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
            list(zip(curve["epoch"], curve["val/top1"], strict=True))
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert "report/arms.csv" in artifacts


def test_sync_brings_mlflow_up_to_date_exactly_and_a_second_sync_adds_nothing(
        unsynced, tmp_path, capsys):
    sweep, _, _ = unsynced
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sync_main([str(sweep), "--tracking-uri", uri]) == 0
    assert "synced 2 trials and 6 epochs of sync" in capsys.readouterr().out
    _mlflow_matches_parquet(sweep, uri)
    assert sync_main([str(sweep), "--tracking-uri", uri]) == 0
    _mlflow_matches_parquet(sweep, uri)


def test_sync_of_a_missing_or_broken_table_exits_2_naming_it(unsynced, tmp_path, capsys):
    sweep, _, _ = unsynced
    assert sync_main([str(tmp_path / "nope")]) == 2
    assert "no such sweep folder" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("spec.yaml", "epochs.parquet"):
        (broken / name).write_bytes((sweep / name).read_bytes())
    (broken / "trials.parquet").write_bytes((sweep / "trials.parquet").read_bytes()[:100])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sync_main([str(broken), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert f"{broken / 'trials.parquet'}: not a readable Parquet table" in err
    assert not (tmp_path / "mlflow.db").exists()


def test_resume_first_brings_mlflow_up_to_date_from_parquet(unsynced, tmp_path, monkeypatch):
    # The store is back: `--resume` replays what MLflow missed before it runs anything (here the
    # sweep had finished, so the replay is all there is to do).
    sweep, _, _ = unsynced
    spec = sweep.parent.parent / "sync.yaml"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(spec), "--set", f"run.storage={sweep.parent}", "--resume"])
    assert code == 0, err.getvalue()[-3000:]
    _mlflow_matches_parquet(sweep, uri)
