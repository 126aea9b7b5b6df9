"""Arm-level early stopping on a real Ray Tune: whole arms stop together at a rung, reference arms
never stop, fewer slots than trials do not deadlock, a paused seed resumes from its checkpoint, a
seed that fails for good does not block the decision, and a driver killed midway through a
one-slot run of the study resumes to the two-slot run's answer (the scheduler rebuilt from its
log; the answer depends neither on concurrency nor on the restart).

The study, 2 seeds, 3 epochs, minimising val/loss, one rung at epoch 2 keeping the best half of
the arms:
ViT-micro (baseline), LocalViT-micro (base arm), its ReLU6 variant (goes on: the lowest loss at
the rung), a control that cannot learn (lr 1e-9: stopped) and one that diverges (lr 1e6: its
trials raise at their second step and fail; the sweep exits 1).
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.sweep import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(900)

SPEC = """\
name: arms
base:
  model: {backbone: localvit_micro}
  data: {name: digits}
  train: {epochs: 3, batch_size: 32, steps_per_epoch: 6, lr: 2.0e-3, warmup_epochs: 0,
          ema: false, amp: false}
  aug: {auto_augment: null, color_jitter: 0.0, reprob: 0.0, mixup: 0.0, cutmix: 0.0,
        hflip: 0.0, scale: [0.5, 1.0]}
  device: cpu
base_arm: localvit
baseline: {model.backbone: vit_micro}
axes:
  model.locality.act: [relu6]
arms:
  frozen: {train.lr: 1.0e-9}
  diverges: {train.lr: 1.0e+6}
seeds: [0, 1]
search:
  metric: val/loss
  mode: min
  scheduler: {asha: {grace_period: 2, reduction_factor: 2}}
run: {resources_per_trial: {cpu: 1}, max_concurrent: 2}
"""
COLUMNS = ["arm", "seed", "status", "epochs_run", "metric_final", "stop_reason"]


def reported_epochs(log: str) -> dict[str, list[int]]:
    """Trial label -> the epochs it reported, in order, from the progress lines."""
    out: dict[str, list[int]] = {}
    for label, epoch in re.findall(r"trial \w+ (\S+/seed\d) epoch (\d+) ", log):
        out.setdefault(label, []).append(int(epoch))
    return out


def table(sweep: Path, name: str = "trials.parquet") -> pd.DataFrame:
    df = pd.read_parquet(sweep / name)
    if name == "trials.parquet":
        return df[COLUMNS].sort_values(["arm", "seed"]).reset_index(drop=True)
    return df.drop(columns=[c for c in ("trial_key",) if c in df]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference_run(ray_session, tmp_path_factory):
    # capsys is function-scoped: capture this module-wide run's stderr by hand.
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        tmp = tmp_path_factory.mktemp("two-slots")
        spec = tmp / "arms.yaml"
        spec.write_text(SPEC)
        code = main([str(spec), "--set", f"run.storage={tmp / 'sweeps'}"])
    assert code == 1, err.getvalue()[-3000:]
    return tmp / "sweeps" / "arms", err.getvalue()


@pytest.fixture(scope="module")
def reference(reference_run):
    return reference_run[0]


def test_the_control_arm_stops_with_all_its_seeds_and_says_why(reference):
    trials = table(reference)
    by_arm = trials.groupby("arm")["status"].agg(set).to_dict()
    assert by_arm == {"baseline": {"completed"}, "localvit": {"completed"},
                      "act=relu6": {"completed"}, "frozen": {"stopped"},
                      "diverges": {"failed"}}
    frozen = trials[trials["arm"] == "frozen"]
    assert (frozen["epochs_run"] == 2).all()
    reason = frozen["stop_reason"].iloc[0]
    assert (frozen["stop_reason"] == reason).all()
    # Minimising a loss: the arm's mean is *above* the cutoff, at rung 1 = epoch 2.
    assert re.fullmatch(r"arm: frozen mean val/loss=[\d.]+ over 2 seeds above rung-1 cutoff "
                        r"[\d.]+ at epoch 2 \(rank [34] of 4; the best 2 go on\)", reason), reason
    # The diverged arm's seeds failed before the rung: it is not judged and blocks nothing.
    decisions = table(reference, "decisions.parquet")
    assert decisions.set_index("arm")["action"].to_dict() == {
        "baseline": "protected", "localvit": "protected", "act=relu6": "promote",
        "frozen": "stop"}
    frozen_mean = decisions.set_index("arm").loc["frozen", "arm_mean"]
    rungs = table(reference, "rungs.parquet")
    assert rungs[rungs["arm"] == "frozen"]["value"].mean() == pytest.approx(frozen_mean)
    assert len(rungs) == 8 and (rungs["epoch"] == 2).all()
    failed = trials[trials["arm"] == "diverges"]
    assert failed["stop_reason"].str.contains("TrialDiverged: training loss is nan").all()


def test_paused_seeds_resume_from_their_checkpoint(reference_run):
    _, log = reference_run
    epochs = reported_epochs(log)
    # The ReLU6 seeds waited at the rung (paused, with their checkpoint) and went on from it:
    # no trial reports an epoch twice.
    assert epochs["act=relu6/seed0"] == epochs["act=relu6/seed1"] == [1, 2, 3]
    assert all(seq == sorted(set(seq)) for seq in epochs.values()), epochs
    assert re.search(r"trial \w+ act=relu6/seed0 started.*trial \w+ act=relu6/seed0 started",
                     log, re.S), "the ReLU6 seeds never paused: the test proves nothing"


def test_a_driver_killed_mid_sweep_with_one_slot_resumes_to_the_two_slot_answer(
        reference, ray_session, tmp_path):
    # One trial at a time reaches the rung in another order than with two slots, and the driver
    # dies midway: decisions depend on reported values only, so the answer is the same.
    spec = tmp_path / "arms.yaml"
    spec.write_text(SPEC)
    storage = tmp_path / "sweeps"
    args = [str(spec), "--set", f"run.storage={storage}", "--set", "run.max_concurrent=1"]
    cmd = [sys.executable, "-m", "orchestrator.sweep", *args]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    log = storage.parent / "driver.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    sweep = storage / "arms"
    try:
        # Kill once the rung has been decided and Tune's saved state has a trial midway (past
        # epoch 1 or 2 of 3, with its checkpoint) that is to go on.
        deadline = time.monotonic() + 300
        while not ((sweep / "decisions.parquet").exists() and (midway := _midway(sweep))):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no decision and trial midway within 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {name: pd.read_parquet(sweep / name) for name in ("trials.parquet", "epochs.parquet")
              if (sweep / name).is_file()}
    # The restart runs in this process (the module's Ray session): the same code path as
    # `python -m orchestrator.sweep ... --resume`, whose exit codes test_sweep.py checks.
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([*args, "--resume"])
    resumed_log = err.getvalue()
    assert code == 1, resumed_log[-3000:]
    pd.testing.assert_frame_equal(table(sweep), table(reference))
    pd.testing.assert_frame_equal(table(sweep, "decisions.parquet"),
                                  table(reference, "decisions.parquet"))
    # The midway trial went on from its checkpoint, not from epoch 1.
    label, saved = midway
    assert reported_epochs(resumed_log)[label] == list(range(saved + 1, 4)), \
        (midway, resumed_log[-3000:])
    # Rows the killed driver wrote survive unchanged; no trial's epoch count went backwards.
    after = {name: pd.read_parquet(sweep / name) for name in before}
    if "epochs.parquet" in before:
        keys = ["trial_key", "epoch"]
        merged = before["epochs.parquet"].merge(after["epochs.parquet"], on=keys, how="left",
                                                suffixes=("", "_after"), indicator=True)
        assert (merged["_merge"] == "both").all()
        assert (merged["val/loss"] == merged["val/loss_after"]).all()
    if "trials.parquet" in before:
        old = before["trials.parquet"].set_index("trial_key")
        new = after["trials.parquet"].set_index("trial_key").loc[old.index]
        assert (new["epochs_run"] >= old["epochs_run"]).all()
        assert (new["status"] == old["status"]).all()
    epochs = pd.read_parquet(sweep / "epochs.parquet")
    assert not epochs.duplicated(["trial_key", "epoch"]).any()


def _midway(sweep: Path) -> tuple[str, int] | None:
    """(`arm/seedN`, epoch) of a trial that Tune's saved state has unfinished after epoch 1 or 2
    (of 3), in an arm that goes on, else None."""
    import json

    states = sorted((sweep / "tune" / "arms").glob("experiment_state-*.json"))
    try:
        data = json.loads(states[-1].read_text()) if states else {}
    except (OSError, ValueError):       # being written
        return None
    for trial_json, meta_json in data.get("trial_data", []):
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        last = meta.get("last_result") or {}
        config = last.get("config", {}).get("trial", {})
        if trial.get("status") in ("RUNNING", "PAUSED", "PENDING") \
                and last.get("epoch") in (1, 2) \
                and config.get("arm") in ("baseline", "localvit", "act=relu6"):
            return f"{config['arm']}/seed{config['seed']}", int(last["epoch"])
    return None


def test_tune_reads_its_metric_and_buffering_through_public_properties():
    """Tune asks TrialScheduler's public properties: `metric` (strict metric checking of every
    result) and `supports_buffered_results` (tune.run buffers no results when it is False, so
    every report reaches the scheduler before the trial goes on)."""
    from orchestrator.scheduling.arm_scheduler import ArmScheduler

    scheduler = ArmScheduler(metric="val/loss", mode="min", time_attr="epoch", max_t=3,
                             grace_period=2, reduction_factor=2, arms=["a", "b"], seeds=[0],
                             references={}, protected=[])
    assert scheduler.metric == "val/loss"
    assert scheduler.supports_buffered_results is False
