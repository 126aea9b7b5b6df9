"""A storage folder that fills up mid-sweep: the driver ends with one clear error that names the
reason (no traceback), every table written before the fault is whole and readable (writes are a
temporary file renamed over the target, so no half file and no temporary file is left), and once
there is room again `--resume` completes the sweep, wherever in Tune's work the disk filled: the
disk is filled from inside the driver at a chosen point (tests/tune_faults.py), not after a delay.

The storage is a small tmpfs mounted for the test (root only; without the permission to mount,
the test skips and says why); the filler is written inside that mount only.
"""

import os
import subprocess
from pathlib import Path

import driver_process
import pandas as pd
import pytest

from orchestrator.sinks.parquet import TRIALS_FILE, read_epochs, read_trials, table_exists
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


def _check_the_stop_and_resume(proc, log: Path, small_disk: Path, tmp_path: Path, args: list[str],
                               point: str):
    """The driver that met the full disk exits 1 with one clear error and whole tables; with the
    filler gone, --resume completes every trial once."""
    try:
        code = proc.wait(timeout=300)
    finally:
        driver_process.kill(proc)
    text = log.read_text()
    assert code == 1, text[-3000:]
    sweep = small_disk / "full"
    # The end-of-sweep probe names the folder when not a byte is left; the state-save point
    # leaves a few KiB, and the error is then Tune's and the sinks' own, reason included.
    assert (f"error: storage: cannot write to {sweep}" in text
            or "Ray Tune stopped with an error: OSError: [Errno 28]" in text), text[-3000:]
    assert "No space left on device" in text and "--resume" in text
    assert "Traceback" not in text, text[-4000:]
    # Every table there is whole: readable (the documented files and the parts not compacted
    # into them yet, each file read), every finished trial with all its epochs.
    if table_exists(sweep, TRIALS_FILE):
        try:
            trials = read_trials(sweep)
        except FileNotFoundError:       # its log was cut short before its first record
            trials = pd.DataFrame({"status": [], "trial_key": []})
        epochs = read_epochs(sweep) if len(trials) else None
        for key in trials.loc[trials["status"] == "completed", "trial_key"]:
            assert sorted(epochs.loc[epochs["trial_key"] == key, "epoch"]) == [1, 2, 3, 4, 5]
    assert not [p.name for p in sweep.rglob("*.tmp")]
    if point == "trial-end":
        assert (trials["status"] == "completed").sum() == 1

    (small_disk / "filler").unlink()
    log2 = tmp_path / "resume.log"
    proc = driver_process.start([*args, "--resume"], log2)
    try:
        code = proc.wait(timeout=300)
    finally:
        driver_process.kill(proc)
    text = log2.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-4000:]
    trials = pd.read_parquet(sweep / "trials.parquet")
    assert sorted(trials["arm"]) == ["baseline", "localvit"]
    assert (trials["status"] == "completed").all() and (trials["epochs_run"] == 5).all()
    epochs = pd.read_parquet(sweep / "epochs.parquet")
    assert len(epochs) == 10 and not epochs.duplicated(["trial_key", "epoch"]).any()


def _start(small_disk: Path, tmp_path: Path, fault: str | None = None):
    spec = tmp_path / "full.yaml"
    spec.write_text(two_arm_spec("full", "{resources_per_trial: {cpu: 1}, max_concurrent: 1}"))
    args = [str(spec), "--set", f"run.storage={small_disk}", "--set", "base.train.epochs=5"]
    log = tmp_path / "driver.log"
    return driver_process.start(args, log, fault=fault), log, args


@pytest.mark.system
@pytest.mark.parametrize("point", ["mid-trial", "trial-end", "state-save", "final-save"])
def test_a_disk_full_at_each_point_of_tunes_work_says_so_and_resumes(small_disk, tmp_path,
                                                                     point):
    # Filled from inside the driver at that point of Tune's work (tests/tune_faults.py), not
    # after a delay: while a trial writes its checkpoints (before any trial ends), once the first
    # trial's rows are written, while Tune copies its experiment state into the storage
    # (which leaves its files cut short), and at Tune's last state save, where the sinks' last
    # writes fail too: the resume then has no trial left to run, and still brings the tables'
    # own files (what pandas reads) up to date.
    proc, log, args = _start(small_disk, tmp_path, fault=f"fill:{point}:{small_disk}")
    _check_the_stop_and_resume(proc, log, small_disk, tmp_path, args, point)


def test_a_cut_short_tune_session_is_set_aside_for_the_one_before(tmp_path):
    # Tune copies its experiment files into the storage in place: a disk that fills up leaves
    # any of them cut short (the experiment state, or the search algorithm's pickle beside a
    # whole state). --resume sets aside every file of that session and restores the session
    # before (or, with none left, reruns what Parquet does not have as finished).
    import pickle

    from orchestrator.plan import build_plan
    from orchestrator.spec import load_spec
    from orchestrator.tune.resume import set_aside_damaged_state
    from orchestrator.tune.storage import saved_state, tune_experiment_dir

    spec = tmp_path / "cut.yaml"
    spec.write_text(two_arm_spec("cut", "{}"))
    plan = build_plan(load_spec(spec, ["run.storage=" + str(tmp_path / "s")]), source="cut.yaml",
                      data_required=False)
    experiment = Path(tune_experiment_dir(plan))
    experiment.mkdir(parents=True)
    searcher = pickle.dumps({"variants": list(range(100))})
    (experiment / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    old, new = "2026-01-01_00-00-00", "2026-01-02_00-00-00"
    for session in (old, new):
        (experiment / f"experiment_state-{session}.json").write_text('{"trial_data": []}')
        (experiment / f"basic-variant-state-{session}.json").write_bytes(searcher)
    cut = experiment / f"basic-variant-state-{new}.json"
    cut.write_bytes(searcher[:-5])
    assert set_aside_damaged_state(plan)
    assert sorted(p.name for p in experiment.glob("*.damaged")) == [
        f"basic-variant-state-{new}.json.damaged", f"experiment_state-{new}.json.damaged"]
    assert saved_state(plan)                           # the older session is there to restore
    assert not set_aside_damaged_state(plan)           # and it is whole: left alone

    # A cut-short experiment state, and then a cut-short tuner: nothing left to restore.
    (experiment / f"experiment_state-{old}.json").write_text('{"trial_data": [{"a": "cut sh')
    (experiment / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1})[:-1])
    assert set_aside_damaged_state(plan)
    assert not saved_state(plan)
    assert not list(experiment.glob("*.json")) and not (experiment / "tuner.pkl").exists()
