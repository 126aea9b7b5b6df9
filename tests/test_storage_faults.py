"""A storage folder that fills up mid-sweep (issue 10): the driver ends with one clear error that
names the folder and the system's reason (no traceback), every table written before the fault is
whole and readable (writes are a temporary file renamed over the target, so no half file and no
temporary file is left), and once there is room again `--resume` completes the sweep.

The storage is a small tmpfs mounted for the test (root only; without the permission to mount,
the test skips and says why); the filler is written inside that mount only.
"""

import contextlib
import os
import subprocess
from pathlib import Path

import driver_process
import pandas as pd
import pytest

from orchestrator.tables import read_epochs, read_trials
from tiny_study import two_arm_spec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs at tmp_path/store, unmounted at the end."""
    store = tmp_path / "store"
    store.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(store)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield store
    finally:
        subprocess.run(["umount", "-l", str(store)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Write zeros into `folder` until it is full; only inside a mount point of our own."""
    assert os.path.ismount(folder), f"{folder} is not the test's own mount"
    filler = folder / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(chunk)
            f.flush()
    return filler


def test_a_full_disk_mid_sweep_says_so_keeps_every_table_whole_and_resume_completes(
        small_disk, tmp_path):
    spec = tmp_path / "full.yaml"
    spec.write_text(two_arm_spec("full", "{resources_per_trial: {cpu: 1}, max_concurrent: 1}"))
    args = [str(spec), "--set", f"run.storage={small_disk}", "--set", "base.train.epochs=5"]
    log = tmp_path / "driver.log"
    proc = driver_process.start(args, log)
    try:
        driver_process.wait_for(proc, log, " completed after ")     # the first trial's row
        filler = _fill(small_disk)
        code = proc.wait(timeout=300)
    finally:
        driver_process.kill(proc)
    text = log.read_text()
    assert code == 1, text[-3000:]
    sweep = small_disk / "full"
    assert f"error: storage: cannot write to {sweep}" in text, text[-3000:]
    assert "No space left on device" in text and "--resume" in text
    assert "Traceback" not in text, text[-4000:]
    # Every table there is whole: readable (the documented files and the parts not compacted
    # into them yet, each file read), with the rows written before the disk filled.
    trials = read_trials(sweep)
    assert len(trials) >= 1 and (trials["status"] == "completed").any()
    done = trials.loc[trials["status"] == "completed", "trial_key"].iloc[0]
    epochs = read_epochs(sweep)
    assert sorted(epochs.loc[epochs["trial_key"] == done, "epoch"]) == [1, 2, 3, 4, 5]
    assert not [p.name for p in sweep.rglob("*.tmp")]

    filler.unlink()
    log2 = tmp_path / "resume.log"
    proc = driver_process.start([*args, "--resume"], log2)
    try:
        code = proc.wait(timeout=300)
    finally:
        driver_process.kill(proc)
    assert code == 0, log2.read_text()[-3000:]
    trials = pd.read_parquet(sweep / "trials.parquet")
    assert sorted(trials["arm"]) == ["baseline", "localvit"]
    assert (trials["status"] == "completed").all() and (trials["epochs_run"] == 5).all()
    epochs = pd.read_parquet(sweep / "epochs.parquet")
    assert len(epochs) == 10 and not epochs.duplicated(["trial_key", "epoch"]).any()


def test_a_cut_short_tune_state_is_set_aside_for_the_one_before(tmp_path):
    # Tune writes its experiment state in place: a disk that fills up leaves the newest file cut
    # short. --resume sets it aside and restores the one before (or, with none left, reruns what
    # Parquet does not have as finished: the test above).
    from orchestrator.plan import build_plan
    from orchestrator.runner import _saved_state, _set_aside_damaged_state, _tune_experiment_dir
    from orchestrator.spec import load_spec

    spec = tmp_path / "cut.yaml"
    spec.write_text(two_arm_spec("cut", "{}"))
    plan = build_plan(load_spec(spec, ["run.storage=" + str(tmp_path / "s")]), source="cut.yaml",
                      data_required=False)
    experiment = Path(_tune_experiment_dir(plan))
    experiment.mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(b"tuner")
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    newest = experiment / "experiment_state-2026-01-02_00-00-00.json"
    newest.write_text('{"trial_data": [{"a": "cut sh')
    assert _set_aside_damaged_state(plan)
    assert not newest.exists() and newest.with_name(newest.name + ".damaged").is_file()
    assert _saved_state(plan)                           # the older state is there to restore
    assert not _set_aside_damaged_state(plan)           # and it is readable: left alone
