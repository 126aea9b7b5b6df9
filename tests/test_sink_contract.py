"""One contract for every sink (Parquet, MLflow, progress), checked the same way on each: what a
sink records for the scenario's trials, and that a `--resume` driver's replay of the same events
(with the earlier trials handed over by the runner) leaves one record per trial, not two.

Each sink is read back through its own record: the Parquet tables, the MLflow runs, the progress
view's counts. A new sink joins by adding one entry to SINKS."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from rich.console import Console

from orchestrator.sinks.mlflow import MlflowSink
from orchestrator.sinks.parquet import ParquetSink, read_epochs, read_trials
from orchestrator.sinks.progress import ProgressSink
from orchestrator.tune.resume import finished_trials

try:
    from sink_scenario import METRIC, feed, scenario
except ImportError:  # tests/ collected as a package
    from tests.sink_scenario import METRIC, feed, scenario

STATUSES = {"k_base": "completed", "k_relu": "stopped", "k_fail": "failed"}
LAST_EPOCH = {"k_base": 3, "k_relu": 1, "k_fail": 2}


@dataclass
class Kind:
    name: str
    make: Callable[[Any], Any]                           # storage folder -> a new sink
    statuses: Callable[[Any, Any], dict[str, str]]       # (sink, sweep folder) -> key: status
    last_epochs: Callable[[Any, Any], dict[str, int]]    # (sink, sweep folder) -> key: epoch


def _mlflow_runs(sink):
    from mlflow import MlflowClient

    client = MlflowClient(sink.tracking_uri)
    runs = [r for r in client.search_runs([sink.experiment_id], max_results=1000)
            if r.data.tags.get("sweep_role") == "trial"]
    return client, runs


def _mlflow_statuses(sink, _dir):
    _, runs = _mlflow_runs(sink)
    keys = [r.data.tags["trial_key"] for r in runs]
    assert len(keys) == len(set(keys)), f"two MLflow runs for one trial: {sorted(keys)}"
    return {r.data.tags["trial_key"]: r.data.tags["status"] for r in runs}


def _mlflow_last_epochs(sink, _dir):
    client, runs = _mlflow_runs(sink)
    out = {}
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, METRIC)]
        assert len(steps) == len(set(steps)), f"an epoch logged twice: {steps}"
        out[run.data.tags["trial_key"]] = max(steps)
    return out


def _parquet_statuses(_sink, sweep_dir):
    trials = read_trials(sweep_dir)
    assert not trials["trial_key"].duplicated().any()
    return dict(zip(trials["trial_key"], trials["status"], strict=True))


def _parquet_last_epochs(_sink, sweep_dir):
    epochs = read_epochs(sweep_dir)
    assert not epochs.duplicated(["trial_key", "epoch"]).any()
    return {k: int(v) for k, v in epochs.groupby("trial_key")["epoch"].max().items()}


def _progress_statuses(sink, _dir):
    return {k: s for k, s in sink._state.items() if s in ("completed", "stopped", "failed")}


SINKS = [
    Kind("parquet", lambda storage: ParquetSink(), _parquet_statuses, _parquet_last_epochs),
    Kind("mlflow", lambda storage: MlflowSink(f"sqlite:///{storage / 'mlflow.db'}",
                                              background=False),
         _mlflow_statuses, _mlflow_last_epochs),
    Kind("progress",
         lambda storage: ProgressSink(console=Console(file=io.StringIO(), force_terminal=False)),
         _progress_statuses, lambda sink, _dir: dict(sink._epoch)),
]


@pytest.fixture(params=SINKS, ids=[k.name for k in SINKS])
def kind(request):
    return request.param


def test_each_finished_trial_is_recorded_once_with_its_status_and_epochs(kind, tmp_path):
    sweep_dir = tmp_path / "unit"
    sink = kind.make(tmp_path)
    feed(sink, sweep_dir)
    assert kind.statuses(sink, sweep_dir) == STATUSES
    assert kind.last_epochs(sink, sweep_dir) == LAST_EPOCH


def test_a_resumed_drivers_replay_leaves_one_record_per_trial(kind, tmp_path):
    sweep_dir = tmp_path / "unit"
    first = kind.make(tmp_path)
    # The first driver recorded every sink's events (Parquet always: the system of record).
    feed([first] if kind.name == "parquet" else [first, ParquetSink()], sweep_dir)
    prior = finished_trials(sweep_dir)
    assert {t.key: t.status for t in prior} == STATUSES
    replay = kind.make(tmp_path)
    feed(replay, sweep_dir, prior=prior)
    assert kind.statuses(replay, sweep_dir) == STATUSES
    assert kind.last_epochs(replay, sweep_dir) == LAST_EPOCH


def test_an_interrupted_sweep_keeps_what_finished_before(kind, tmp_path):
    """Two trials finished, one running when the driver was stopped (finish(interrupted))."""
    sweep_dir = tmp_path / "unit"
    sink = kind.make(tmp_path)
    infos, epochs, outcomes = scenario()
    feed(sink, sweep_dir, (infos, epochs, outcomes[:2]), finish=False)
    sink.finish(interrupted=True)
    statuses = kind.statuses(sink, sweep_dir)
    # The running trial: no record (Parquet), or one that says it was interrupted (an MLflow
    # run marked KILLED), never a finished status.
    assert statuses.pop("k_fail", "interrupted") == "interrupted"
    assert statuses == {k: STATUSES[k] for k in ("k_base", "k_relu")}
    # The running trial's epochs are kept too (its row comes when it finishes after --resume).
    assert kind.last_epochs(sink, sweep_dir) == LAST_EPOCH
