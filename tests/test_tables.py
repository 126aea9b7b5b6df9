"""The Parquet sink: one row per trial and per epoch, upserts on replay, explicit schema, atomic."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator.sinks.base import TrialOutcome
from orchestrator.sinks.parquet import (
    TRIAL_FIELDS,
    ParquetSink,
    atomic_write_bytes,
    read_epochs,
    read_trials,
)

try:
    from sink_scenario import METRIC, SPEC, curve, feed, scenario
except ImportError:  # tests/ collected as a package
    from tests.sink_scenario import METRIC, SPEC, curve, feed, scenario


def installed_versions() -> dict[str, str]:
    names = ("torch", "timm", "ray", "mlflow", "optuna")
    return {"python": platform.python_version(),
            **{n: importlib.metadata.version(n) for n in names}}


def check_commit(commit: str | None) -> None:
    """`commit` is a real commit of the repository the orchestrator's code was imported from
    (HEAD when the sink started, which other work may have moved since), or null when that code
    is not in a git repository (an installed wheel, a copy)."""
    import orchestrator

    code = Path(orchestrator.__file__).resolve().parent
    commit = None if pd.isna(commit) else commit
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=code,
                            capture_output=True, check=False)
    if inside.returncode != 0:
        assert commit is None
        return
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit or ""), commit
    exists = subprocess.run(["git", "cat-file", "-e", commit.removesuffix("-dirty") + "^{commit}"],
                            cwd=code, capture_output=True, check=False)
    assert exists.returncode == 0, commit


def test_one_row_per_trial_and_per_epoch(tmp_path):
    feed(ParquetSink(), tmp_path)
    trials = read_trials(tmp_path).set_index("trial_key")
    assert sorted(trials.index) == ["k_base", "k_fail", "k_relu"]
    assert trials.loc["k_base", "status"] == "completed"
    assert trials.loc["k_relu", "status"] == "stopped"
    assert trials.loc["k_relu", "stop_reason"].startswith("asha:")
    assert trials.loc["k_fail", "status"] == "failed"
    assert trials.loc["k_base", "metric"] == METRIC
    assert trials.loc["k_base", "metric_final"] == pytest.approx(0.8)
    assert trials.loc["k_base", "epochs_run"] == 3
    assert trials.loc["k_base", "params"] == 1234
    # The failed trial reported no final metric: taken from its epochs instead.
    assert trials.loc["k_fail", "metric_final"] == pytest.approx(0.7)
    assert trials.loc["k_fail", "metric_best"] == pytest.approx(0.7)
    assert trials.loc["k_relu", "config.model.locality.act"] == "relu6"
    assert trials.loc["k_fail", "config.model.locality.layers"] == [1, 2]
    assert trials.loc["k_base", "config.model.locality"] is None
    assert json.loads(trials.loc["k_base", "tags"]) == {"design": "ofat"}
    assert trials.loc["k_base", "versions"] == installed_versions()
    check_commit(trials.loc["k_base", "git_commit"])

    epochs = read_epochs(tmp_path)
    assert len(epochs) == 6
    assert not epochs.duplicated(["trial_key", "epoch"]).any()
    base = epochs[epochs.trial_key == "k_base"].sort_values("epoch")
    assert base[METRIC].tolist() == pytest.approx([0.6, 0.7, 0.8])


def test_replay_by_a_new_sink_upserts_instead_of_appending(tmp_path):
    feed(ParquetSink(), tmp_path)
    first = read_trials(tmp_path)
    infos, epochs, outcomes = scenario()
    # After --resume the stopped trial is replayed and this time runs to the end.
    epochs = epochs + curve("k_relu", 3)
    outcomes[1] = TrialOutcome("k_relu", "completed", "completed all 3 epochs", 3, 9.0,
                               final={METRIC: 0.8}, best={METRIC: 0.8}, params=1300, macs=60000)
    feed(ParquetSink(), tmp_path, (infos, epochs, outcomes))
    trials = read_trials(tmp_path).set_index("trial_key")
    assert len(trials) == len(first) == 3
    assert trials.loc["k_relu", "status"] == "completed"
    assert trials.loc["k_relu", "epochs_run"] == 3
    ep = read_epochs(tmp_path)
    assert len(ep) == 3 + 3 + 2
    assert not ep.duplicated(["trial_key", "epoch"]).any()


def test_a_retry_that_ends_earlier_drops_the_stale_epochs(tmp_path):
    feed(ParquetSink(), tmp_path)
    infos, _, _ = scenario()
    sink = ParquetSink()
    feed(sink, tmp_path, ([infos[0]], curve("k_base", 1),
                          [TrialOutcome("k_base", "failed", "OOM", 1, 1.0, {}, {})]))
    ep = read_epochs(tmp_path)
    assert sorted(ep[ep.trial_key == "k_base"].epoch) == [1]
    assert read_trials(tmp_path).set_index("trial_key").loc["k_base", "status"] == "failed"


def test_running_trials_have_no_row_but_their_epochs_are_flushed_on_finish(tmp_path):
    infos, epochs, outcomes = scenario()
    feed(ParquetSink(), tmp_path, (infos, epochs, outcomes[:1]))
    assert read_trials(tmp_path).trial_key.tolist() == ["k_base"]
    assert set(read_epochs(tmp_path).trial_key) == {"k_base", "k_relu", "k_fail"}


def test_schema_is_explicit_and_stable_across_replays(tmp_path):
    feed(ParquetSink(), tmp_path)
    schema1 = pq.read_schema(tmp_path / "trials.parquet")
    feed(ParquetSink(), tmp_path)
    schema2 = pq.read_schema(tmp_path / "trials.parquet")
    assert schema1.remove_metadata() == schema2.remove_metadata()
    fixed = [schema1.field(f.name) for f in TRIAL_FIELDS]
    assert [(f.name, f.type) for f in fixed] == [(f.name, f.type) for f in TRIAL_FIELDS]
    config_cols = [f for f in schema1 if f.name.startswith("config.")]
    assert config_cols and all(f.type == pa.string() for f in config_cols)
    assert schema1.field("status").nullable is False
    ep = pq.read_schema(tmp_path / "epochs.parquet")
    assert ep.field("epoch").type == pa.int64()
    assert {ep.field(n).type for n in (METRIC, "train/loss", "lr")} == {pa.float64()}


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    feed(ParquetSink(), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["epochs.parquet", "spec.yaml", "trials.parquet"]
    target = tmp_path / "trials.parquet"
    before = target.read_bytes()
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # fails mid-write
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["epochs.parquet", "spec.yaml", "trials.parquet"]


def test_spec_yaml_is_the_spec_with_provenance_comments(tmp_path):
    feed(ParquetSink(), tmp_path)
    text = (tmp_path / "spec.yaml").read_text()
    assert yaml.safe_load(text) == SPEC
    assert "# git commit:" in text and "torch" in text


def test_contract_violations_are_reported(tmp_path):
    sink = ParquetSink()
    with pytest.raises(RuntimeError, match="start"):
        sink.trial_finished(scenario()[2][0])
    sink.start(sweep_name="unit", storage_dir=str(tmp_path), spec=SPEC, metric=METRIC,
               mode="max", total_trials=1)
    with pytest.raises(ValueError, match="never started"):
        sink.trial_finished(scenario()[2][0])
    sink.trial_started(scenario()[0][0])
    with pytest.raises(ValueError, match="status must be one of"):
        sink.trial_finished(TrialOutcome("k_base", "running", "", 0, 0.0, {}, {}))
