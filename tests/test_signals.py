"""Ctrl-C (SIGINT) and SIGTERM (`timeout`, batch schedulers, `ray stop`) stop a sweep cleanly
: the driver exits 1 with the resume hint and no stack dump, the trial that was running
is KILLED in MLflow (none left RUNNING) with its rows kept in Parquet, and `--resume` completes
the sweep to the same trials an uninterrupted run gives. SIGKILL (nothing to handle) before the
first result and during the final writes: `--resume` still ends every trial once in Parquet and
in MLflow, with the report written (the kill mid-sweep is test_arm_scheduler.py's).

The driver is a real `python -m orchestrator.sweep` process, sent SIGTERM once its first trial has
reported an epoch; the resume runs in-process on the suite's Ray session.
"""

import contextlib
import io
import signal
import subprocess
from pathlib import Path

import driver_process
import pandas as pd
import pytest

from orchestrator.sweep import main
from tiny_study import two_arm_spec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)

# Two arms x 1 seed, 3 short epochs, no early stopping: every trial must end 'completed'.
SPEC = two_arm_spec("sig", "{resources_per_trial: {cpu: 1}, max_concurrent: 1}")


def _mlflow_trial_runs(storage: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sig")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return [r for r in runs if r.data.tags.get("sweep_role") == "trial"]


def _start_driver(tmp: Path, *sets: str, fault: str | None = None
                  ) -> tuple[subprocess.Popen, list[str], Path, Path]:
    """The study as a driver process (with `--set` for each of `sets`, and `fault` injected by
    tests/tune_faults.py), storage and log in `tmp`: (process, its arguments for the --resume,
    storage root, log file)."""
    spec = tmp / "sig.yaml"
    spec.write_text(SPEC)
    storage = tmp / "sweeps"
    args = [str(spec), "--set", f"run.storage={storage}"]
    for value in sets:
        args += ["--set", value]
    log = tmp / "driver.log"
    return driver_process.start(args, log, fault=fault), args, storage, log


def test_sigterm_stops_cleanly_and_resume_completes(ray_session, tmp_path):
    # SIGTERM is handled by raising SIGINT in the driver (runner._sigterm_as_sigint), so this also
    # walks Ctrl-C's path; one signalled driver keeps the suite's time down.
    proc, args, storage, log = _start_driver(tmp_path)
    try:
        driver_process.wait_for(proc, log, " epoch 1 ")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        driver_process.kill(proc)
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "--resume" in text, text[-3000:]
    # No Python traceback and no Ray native stack dump ("*** SIGTERM received ..." / "@ 0x...").
    assert "Traceback" not in text and "*** " not in text, text[-3000:]
    runs = _mlflow_trial_runs(storage)
    assert runs and {r.info.status for r in runs} <= {"KILLED", "FINISHED"}, \
        [(r.info.run_name, r.info.status) for r in runs]
    assert any(r.info.status == "KILLED" for r in runs)
    epochs_before = pd.read_parquet(storage / "sig" / "epochs.parquet")

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, "--resume"]) == 0, err.getvalue()[-3000:]
    trials = pd.read_parquet(storage / "sig" / "trials.parquet")
    assert sorted(trials["arm"]) == ["baseline", "localvit"]
    assert (trials["status"] == "completed").all() and (trials["epochs_run"] == 3).all()
    runs = _mlflow_trial_runs(storage)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    epochs = pd.read_parquet(storage / "sig" / "epochs.parquet")
    assert not epochs.duplicated(["trial_key", "epoch"]).any()
    kept = epochs_before.merge(epochs, on=["trial_key", "epoch"], suffixes=("", "_after"))
    assert len(kept) == len(epochs_before)
    assert (kept["val/top1"] == kept["val/top1_after"]).all()


@pytest.mark.parametrize("moment,line", [
    ("before the first result", " started"),
    ("during the final writes", " finished after "),
])
def test_sigkill_at_a_moment_then_resume_ends_every_trial_once(moment, line, ray_session,
                                                              tmp_path):
    # SIGKILL cannot be handled: whatever the driver had not written is lost, and --resume must
    # still end with each trial once in Parquet and in MLflow (none left RUNNING).
    proc, args, storage, log = _start_driver(tmp_path)
    try:
        driver_process.wait_for(proc, log, line)
    finally:
        driver_process.kill(proc)
    assert "Report:" not in log.read_text()     # killed before the end, as meant

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, "--resume"]) == 0, err.getvalue()[-3000:]
    sweep = storage / "sig"
    trials = pd.read_parquet(sweep / "trials.parquet")
    assert sorted(trials["arm"]) == ["baseline", "localvit"]
    assert (trials["status"] == "completed").all() and (trials["epochs_run"] == 3).all()
    epochs = pd.read_parquet(sweep / "epochs.parquet")
    assert len(epochs) == 6 and not epochs.duplicated(["trial_key", "epoch"]).any()
    runs = _mlflow_trial_runs(storage)
    assert sorted(r.info.run_name for r in runs) == ["baseline/seed0", "localvit/seed0"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert (sweep / "report" / "arms.csv").is_file()


def test_sigkill_between_a_checkpoint_and_tunes_state_save_resumes_that_trial(ray_session,
                                                                               tmp_path):
    # With the default checkpoints_to_keep (1): Tune saved its state when the first trial had
    # its first checkpoint, then the trial registered two more and the checkpoint keeper pruned,
    # and the driver was SIGKILLed before Tune saved its state again (tests/tune_faults.py, at
    # that point of Tune's work, not after a delay). The saved state names a checkpoint two
    # behind the newest: it must still be there, and --resume goes on from it.
    proc, args, storage, log = _start_driver(tmp_path, "base.train.epochs=5",
                                             fault="kill:after-prune")
    try:
        assert proc.wait(timeout=300) == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
        driver_process.kill(proc)
    assert "test fault: killed after pruning" in log.read_text()

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, "--resume"]) == 0, err.getvalue()[-3000:]
    sweep = storage / "sig"
    trials = pd.read_parquet(sweep / "trials.parquet")
    assert (trials["status"] == "completed").all() and (trials["epochs_run"] == 5).all()
    assert len(trials) == 2
    epochs = pd.read_parquet(sweep / "epochs.parquet")
    assert len(epochs) == 10 and not epochs.duplicated(["trial_key", "epoch"]).any()
    # At the end the keeper has left each trial its newest checkpoint only.
    kept = sorted(p.parent.name for p in (sweep / "tune" / "sig").glob("*/checkpoint_*"))
    assert len(kept) == 2 and len(set(kept)) == 2, kept
