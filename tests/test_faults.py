"""Trial faults stay inside the trial: a trial that raises is retried from its last
checkpoint up to run.max_failures, then recorded as failed with its error (Parquet status and
stop_reason, MLflow status, tag and a traceback artifact); the other trials complete and the
sweep exits 1.

Faults are injected by a reporter wrapper of the tests' own (tests/trial_faults.py): LocalViT's
seed raises once after epoch 2 (retried: goes on from its epoch-2 checkpoint), the baseline's
after epoch 1 and again after epoch 2 of its retry (max_failures 1: failed).
"""

import contextlib
import functools
import io
import re
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.sweep import main
from orchestrator.tune import runner
from tiny_study import two_arm_spec
from trial_faults import Faults, parse_faults, ship_by_value

pytestmark = pytest.mark.timeout(600)

SPEC = two_arm_spec("faults", "{resources_per_trial: {cpu: 1}, max_concurrent: 2, max_failures: 1}")


def test_the_fault_syntax():
    assert parse_faults(None) is None
    assert parse_faults("localvit/0@2;act=relu6/1@1*3:/tmp/x") == (
        {("localvit", 0): (2, 1), ("act=relu6", 1): (1, 3)}, "/tmp/x")


def test_a_retried_trial_resumes_and_a_failing_one_is_recorded(ray_session, tmp_path,
                                                                monkeypatch):
    markers = tmp_path / "faults"
    markers.mkdir()
    ship_by_value()
    faults = Faults(f"localvit/0@2*1;baseline/0@1*2:{markers}")
    monkeypatch.setattr(runner, "run_sweep", functools.partial(runner.run_sweep,
                                                               wrap_reporter=faults))
    spec = tmp_path / "faults.yaml"
    spec.write_text(SPEC)
    storage = tmp_path / "sweeps"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(spec), "--set", f"run.storage={storage}"])
    log = err.getvalue()
    assert code == 1, log[-3000:]
    assert len(list(markers.iterdir())) == 3        # the faults really fired: 1 + 2

    trials = pd.read_parquet(storage / "faults" / "trials.parquet").set_index("arm")
    assert trials.loc["localvit", "status"] == "completed"
    assert trials.loc["localvit", "epochs_run"] == 3
    assert trials.loc["baseline", "status"] == "failed"
    assert re.search(r"InjectedFault: injected fault 2 of 2 after epoch 2 of baseline/seed0",
                     trials.loc["baseline", "stop_reason"]), trials.loc["baseline", "stop_reason"]
    # The retried trial went on from its epoch-2 checkpoint: every epoch once, none repeated.
    reported = re.findall(r"localvit/seed0 epoch (\d+) ", log)
    assert reported == ["1", "2", "3"], log[-3000:]
    epochs = pd.read_parquet(storage / "faults" / "epochs.parquet")
    assert not epochs.duplicated(["trial_key", "epoch"]).any()
    key = trials.loc["localvit", "trial_key"]
    assert sorted(epochs[epochs["trial_key"] == key]["epoch"]) == [1, 2, 3]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name("faults")
    runs = {r.data.tags["arm"]: r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("sweep_role") == "trial"}
    assert runs["localvit"].info.status == "FINISHED"
    failed = runs["baseline"]
    assert failed.info.status == "FAILED" and failed.data.tags["status"] == "failed"
    assert "InjectedFault" in failed.data.tags["stop_reason"]
    path = client.download_artifacts(failed.info.run_id, "error.txt", str(tmp_path))
    text = Path(path).read_text()
    # Ray's traceback of the trial, uncoloured: the raising line and the exception.
    assert 'File "' in text and "raise InjectedFault" in text and "\x1b[" not in text
    assert text.rstrip().endswith("injected fault 2 of 2 after epoch 2 of baseline/seed0")
