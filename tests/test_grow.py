"""A study that grows without rerunning, end to end on Ray Tune, MLflow (sqlite) and Parquet: the
quick start finished with seeds [0, 1, 2], then `--resume --set 'seeds=[0,1,2,3,4]'` runs exactly
the 6 new trials and a new axis value exactly its 5; the earlier trials' rows and MLflow runs are
untouched and the report covers all of them. A recipe change is refused (exit 2, nothing
written); `--rerun-changed` reruns the changed trials and the report reads the new ones; a grown
sweep killed mid-run resumes with `--resume` again.

The sweeps run in-process on the suite's Ray session (`orchestrator.sweep.main`, as
test_sweep.py), at 2 epochs of 4 steps with the quick start's arm-level halving at epoch 1, so
the decisions logged by the first run meet the grown runs' new seeds and new arm; the killed
driver is a real process (tests/driver_process.py, as test_signals.py).
"""

import os
from pathlib import Path

import driver_process
import pandas as pd
import pytest
import yaml
from sweep_cli import rows, run

from orchestrator.report.inputs import load_sweep

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"
pytestmark = pytest.mark.timeout(1200)
TINY = ("--set", "base.train.epochs=2", "--set", "base.train.steps_per_epoch=4",
        "--set", "search.scheduler.asha.grace_period=1")
MORE_SEEDS = ("--set", "seeds=[0,1,2,3,4]")
MORE_ARMS = ("--set", "axes.model.locality.act=[relu6,hs]")




def runs(storage: Path, name: str) -> dict[str, tuple]:
    """Trial key -> (run id, status, end time, metrics) of the sweep's MLflow trial runs; fails
    if a key has two runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    found = [r for r in client.search_runs([exp.experiment_id], max_results=1000)
             if r.data.tags.get("sweep_role") == "trial"]
    by_key = {r.data.tags["trial_key"]: (r.info.run_id, r.info.status, r.info.end_time,
                                         dict(r.data.metrics)) for r in found}
    assert len(by_key) == len(found), "a trial key has two MLflow runs"
    return by_key


def planned_keys(sweep: Path) -> list[str]:
    spec = yaml.safe_load((sweep / "spec.yaml").read_text())
    return [t["key"] for t in spec["plan"]["trials"]]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def grown(ray_session, tmp_path_factory):
    """The quick start run, grown by two seeds, then by an axis value: the storage and, after
    each of the three runs, (exit code, trials rows, MLflow runs, output, planned keys)."""
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    storage = tmp_path_factory.mktemp("grow")
    base = (QUICKSTART, "--set", f"run.storage={storage}", *TINY)
    sweep = storage / "quickstart"
    states = []
    for extra in ((), ("--resume", *MORE_SEEDS), ("--resume", *MORE_SEEDS, *MORE_ARMS)):
        code, text = run(*base, *extra)
        states.append((code, rows(sweep), runs(storage, "quickstart"), text,
                       planned_keys(sweep)))
    yield storage, base, states
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved


def assert_untouched(before: pd.DataFrame, after: pd.DataFrame, runs_before: dict,
                     runs_after: dict) -> None:
    pd.testing.assert_frame_equal(after.loc[before.index], before)
    assert {k: runs_after[k] for k in runs_before} == runs_before


def test_more_seeds_run_exactly_the_new_trials_and_keep_the_old_ones(grown):
    storage, _, states = grown
    (code0, rows0, runs0, text0, _), (code1, rows1, runs1, text1, keys1) = states[:2]
    assert code0 == 0, text0[-3000:]
    assert code1 == 0, text1[-3000:]
    assert len(rows0) == 9 and set(runs0) == set(rows0.index)
    new = rows1.loc[rows1.index.difference(rows0.index)]
    assert len(rows1) == 15 and len(new) == 6
    assert sorted(new["seed"]) == [3, 3, 3, 4, 4, 4]
    assert_untouched(rows0, rows1, runs0, runs1)
    assert set(runs1) == set(rows1.index)
    assert "6 new; 6 to run" in text1
    # Tune's finished experiment was set aside (once for each of the fixture's two grown runs)
    # and a fresh one ran; spec.yaml has the grown plan record.
    sweep = storage / "quickstart"
    aside = sorted(p.name.split(".")[1][:6] for p in (sweep / "tune").glob("quickstart.*"))
    assert aside == ["grown-", "grown-"] and (sweep / "tune" / "quickstart").is_dir()
    assert sorted(keys1) == sorted(rows1.index)


def test_a_new_axis_value_runs_its_seeds_and_the_report_covers_every_trial(grown):
    storage, _, states = grown
    (_, rows1, runs1, _, _), (code2, rows2, runs2, text2, _) = states[1:]
    assert code2 == 0, text2[-3000:]
    new = rows2.loc[rows2.index.difference(rows1.index)]
    assert len(rows2) == 20 and sorted(new["seed"]) == [0, 1, 2, 3, 4]
    assert set(new["arm"]) == {"act=hs"}
    # Added after the rung's halving cut was logged: not judged there, so it runs through.
    assert (new["status"] == "completed").all(), new[["status", "stop_reason"]]
    assert_untouched(rows1, rows2, runs1, runs2)
    report = load_sweep(storage / "quickstart")
    assert sorted(report.trials["trial_key"]) == sorted(rows2.index)
    assert (storage / "quickstart" / "report" / "arms.csv").is_file()


def test_a_recipe_change_is_refused_before_anything_is_written(grown):
    storage, base, _ = grown
    before = snapshot(storage)
    code, text = run(*base, "--resume", *MORE_SEEDS, *MORE_ARMS, "--set", "base.train.lr=1e-3")
    assert code == 2, text[-3000:]
    assert "base.train.lr" in text and "changes 20 of the sweep's trials" in text
    assert "--set name=<new name>" in text and "--rerun-changed" in text
    assert snapshot(storage) == before


def test_rerun_changed_reruns_the_changed_trials_and_supersedes_their_rows(ray_session,
                                                                           tmp_path):
    base = (QUICKSTART, "--set", f"run.storage={tmp_path}", "--set", "name=rerun",
            "--set", "seeds=[0]", *TINY)
    code, text = run(*base)
    assert code == 0, text[-3000:]
    sweep = tmp_path / "rerun"
    old = rows(sweep)
    code, text = run(*base, "--resume", "--rerun-changed", "--set", "base.train.lr=1e-3")
    assert code == 0, text[-3000:]
    after = rows(sweep)
    assert len(old) == 3 and len(after) == 6      # the old rows stay, superseded
    pd.testing.assert_frame_equal(after.loc[old.index], old)
    current = sorted(after.index.difference(old.index))
    assert sorted(planned_keys(sweep)) == current
    assert sorted(load_sweep(sweep).trials["trial_key"]) == current
    assert set(runs(tmp_path, "rerun")) == set(after.index)


def test_a_grown_sweep_killed_mid_run_resumes_with_resume_again(ray_session, tmp_path):
    base = (QUICKSTART, "--set", f"run.storage={tmp_path}", "--set", "name=killed",
            "--set", "seeds=[0]", *TINY)
    code, text = run(*base)
    assert code == 0, text[-3000:]
    sweep = tmp_path / "killed"
    old, old_runs = rows(sweep), runs(tmp_path, "killed")
    grow = [*map(str, base), "--resume", "--set", "seeds=[0,1]"]
    log = tmp_path / "driver.log"
    proc = driver_process.start(grow, log)
    try:
        driver_process.wait_for(proc, log, " epoch 1 ")   # a new trial is under way
    finally:
        driver_process.kill(proc)
    assert "Report:" not in log.read_text()
    # Killed after the grown plan record was written, before Tune's new experiment had ended.
    assert len(planned_keys(sweep)) == 6
    code, text = run(*grow)
    assert code == 0, text[-3000:]
    after, after_runs = rows(sweep), runs(tmp_path, "killed")
    assert len(after) == 6 and sorted(after["seed"]) == [0, 0, 0, 1, 1, 1]
    assert_untouched(old, after, old_runs, after_runs)
    assert set(after_runs) == set(after.index)
    assert {r[1] for r in after_runs.values()} == {"FINISHED"}
