"""The CLI end to end on a real Ray Tune, MLflow (sqlite) and Parquet: every shipped YAML runs with
--smoke; each trial has exactly one MLflow child run and one trials.parquet row and the two agree;
ASHA really stops trials (and says so); Optuna really proposes; --resume adds nothing; bad input
exits 2 with nothing created; --dry-run starts nothing.

One Ray session is shared by the run (conftest.py); the sweeps run in-process
through `orchestrator.sweep.main`, the same code path as `python -m orchestrator.sweep`, and two
cases go through a real subprocess to prove the module entry point and its exit codes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.sweep import main

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
SHIPPED = sorted(SPACES.glob("*.yaml"))
NAMES = {"ablation": "localvit-ablation", "backbones": "localvit-backbones",
         "backbones_cpu": "backbones-cpu", "hpo": "localvit-hpo", "quickstart": "quickstart"}

# The smoke fixture runs five sweeps: 171 s idle, over 20 minutes under two busy processes, where
# Ray (its workers niced) starts trials minutes late.
pytestmark = pytest.mark.timeout(3600)
# 4 steps per epoch instead of --smoke's 40: the same code paths (plan, Tune, early stopping,
# MLflow, Parquet, report) at a third of the time; whether the arms learn is not tested here.
FAST = ("--set", "base.train.steps_per_epoch=4")


@pytest.fixture(scope="module")
def smoke(ray_session, tmp_path_factory):
    """Every shipped YAML with --smoke into one storage root (one shared mlflow.db)."""
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    storage = tmp_path_factory.mktemp("sweeps")
    # A restart script can always say --resume: with nothing saved yet, the sweep just starts.
    codes = {p.stem: main([str(p), "--smoke", "--set", f"run.storage={storage}",
                           *FAST,
                           *(["--resume"] if p.stem == "quickstart" else [])])
             for p in SHIPPED}
    yield storage, codes
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved


def trials_of(storage: Path, stem: str):
    from orchestrator.sinks.parquet import read_trials

    return read_trials(storage / NAMES[stem])


def mlflow_runs(storage: Path, stem: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name(NAMES[stem])
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("sweep_role") == "trial"]


def planned_count(stem: str) -> int:
    from orchestrator.plan import build_plan
    from orchestrator.spec import load_spec
    from orchestrator.spec.smoke import shrink_spec

    plan = build_plan(shrink_spec(load_spec(SPACES / f"{stem}.yaml")), source=stem, smoke=True)
    return plan.num_trials


def test_every_shipped_yaml_runs_end_to_end_with_smoke(smoke):
    _, codes = smoke
    assert codes == {p.stem: 0 for p in SHIPPED}


@pytest.mark.parametrize("stem", list(NAMES))
def test_one_child_run_and_one_row_per_trial_and_they_agree(smoke, stem):
    storage, _ = smoke
    rows = trials_of(storage, stem)
    runs = mlflow_runs(storage, stem)
    assert len(rows) == planned_count(stem) == len(runs)
    assert rows["trial_key"].is_unique
    by_key = {r.data.tags["trial_key"]: r for r in runs}
    assert set(by_key) == set(rows["trial_key"])
    for row in rows.to_dict("records"):
        run = by_key[row["trial_key"]]
        tags = run.data.tags
        assert run.info.run_name == f"{row['arm']}/seed{row['seed']}"
        assert (tags["arm"], tags["seed"], tags["backbone"]) == \
            (row["arm"], str(row["seed"]), row["backbone"])
        assert (tags["status"], tags["stop_reason"]) == (row["status"], row["stop_reason"])
        assert row["status"] in ("completed", "stopped")
        assert run.data.metrics["val/top1"] == pytest.approx(row["metric_final"])
        assert run.data.params["train.epochs"] == "3"
    from orchestrator.sinks.parquet import read_epochs

    epochs = read_epochs(storage / NAMES[stem])
    counts = epochs.groupby("trial_key").size().to_dict()
    assert counts == dict(zip(rows["trial_key"], rows["epochs_run"], strict=True))


@pytest.mark.parametrize("stem,pattern", [
    # A designed study stops whole arms (arm-level halving; --smoke keeps the study's unit).
    ("ablation", r"arm: \S+ mean val/top1=[\d.e-]+ over 1 seeds below rung-\d cutoff [\d.e-]+ "
                 r"at epoch \d \(rank \d+ of \d+; the best \d+ go on\)"),
    # A search stops single trials (Ray's ASHA, recording why).
    ("hpo", r"asha: val/top1=[\d.e-]+ below rung-\d cutoff [\d.e-]+ at epoch \d"),
])
def test_early_stopping_really_stops_trials_and_records_why(smoke, stem, pattern):
    storage, _ = smoke
    rows = trials_of(storage, stem)
    stopped = rows[rows["status"] == "stopped"]
    assert len(stopped) >= 1
    assert stopped["stop_reason"].str.fullmatch(pattern).all(), list(stopped["stop_reason"])
    assert (stopped["epochs_run"] < 3).all()
    completed = rows[rows["status"] == "completed"]
    assert (completed["epochs_run"] == 3).all()
    assert (completed["stop_reason"] == "completed all 3 epochs").all()
    runs = {r.data.tags["trial_key"]: r for r in mlflow_runs(storage, stem)}
    for key, reason in zip(stopped["trial_key"], stopped["stop_reason"], strict=True):
        assert runs[key].data.tags["status"] == "stopped"
        assert runs[key].data.tags["stop_reason"] == reason
    if stem == "ablation":
        # Reference arms are never stopped.
        assert set(rows[rows["arm"].isin(["baseline", "localvit_t"])]["status"]) == {"completed"}


def test_optuna_proposes_the_hpo_trials(smoke):
    storage, _ = smoke
    rows = trials_of(storage, "hpo")
    configs = [json.loads(c) if isinstance(c, str) else c for c in rows["config"]]
    lrs = [c["train"]["lr"] for c in configs]
    assert len(set(lrs)) == len(lrs) == 4
    assert all(2e-4 <= lr <= 3e-3 for lr in lrs)
    drop = [c["model"]["drop_path"] for c in configs]
    assert len(set(drop)) == 4 and all(0.0 <= d <= 0.3 for d in drop)
    assert set(rows["arm"]) == {"hpo"}


def test_resume_adds_no_runs_and_no_rows(smoke):
    storage, _ = smoke
    before = len(trials_of(storage, "quickstart"))
    code = main([str(SPACES / "quickstart.yaml"), "--smoke", "--resume",
                 "--set", f"run.storage={storage}", *FAST])
    assert code == 0
    assert (len(trials_of(storage, "quickstart")) == before
            == len(mlflow_runs(storage, "quickstart")))


def test_resume_of_a_different_sweep_is_refused(smoke, capsys):
    storage, _ = smoke
    code = main([str(SPACES / "quickstart.yaml"), "--smoke", "--resume",
                 "--set", f"run.storage={storage}", *FAST, "--set", "seeds=[7]"])
    assert code == 2
    err = capsys.readouterr().err
    # Seeds [7] in place of [0, 1, 2]: a study grows (tests/test_grow.py), it does not shrink;
    # under --smoke the single seed also turns the stopping unit to per trial, another sweep.
    assert "--resume:" in err and "seeds" in err


def test_rerun_without_resume_is_refused(smoke, capsys):
    storage, _ = smoke
    code = main([str(SPACES / "quickstart.yaml"), "--smoke", "--set", f"run.storage={storage}",
                 *FAST])
    assert code == 2
    assert "already exists" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_creates_nothing(tmp_path, capsys):
    storage = tmp_path / "never"
    code = main([str(SPACES / "quickstart.yaml"), "--dry-run", "--set", f"run.storage={storage}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "trials: 9 (arms x seeds)" in out and "epochs at most: 90" in out
    assert "estimated compute" in out and not storage.exists()


BAD = {
    "unknown key": (("seeds:", "sedes:"),
                    "quickstart.yaml: sedes: unknown key; did you mean 'seeds'?"),
    "wrong type": (("epochs: 10", "epochs: ten"), "base: train.epochs"),
    "unknown backbone": (("backbone: localvit_micro", "backbone: localvit_mikro"),
                         "base: model.backbone: unknown model 'localvit_mikro'"),
    "unknown activation": (("[relu6]", "[relu6, gelu]"), "axes.model.locality.act[1]"),
    "layer range": (("[relu6]", "[relu6]\n  model.locality.layers: ['2-9']"),
                    "axes.model.locality.layers[0]: model.locality.layers range '2-9'"),
    "empty axis": (("[relu6]", "[]"), "axes.model.locality.act: empty axis"),
    "duplicate seeds": (("[0, 1, 2]", "[0, 1, 1]"), "seeds: duplicate seed(s) [1]"),
    "metric": (("metric: val/top1", "metric: val_ema/top1"), "search.metric: no trial"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_names_file_and_key_and_creates_nothing(case, tmp_path, capsys):
    (old, new), needle = BAD[case]
    text = (SPACES / "quickstart.yaml").read_text()
    assert old in text
    spec = tmp_path / "quickstart.yaml"
    spec.write_text(text.replace(old, new, 1))
    storage = tmp_path / "store"
    code = main([str(spec), "--set", f"run.storage={storage}"])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err, err
    assert not storage.exists()


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "orchestrator.sweep", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)


def test_cli_yaml_syntax_error_exits_2(tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: x\nseeds: [0, 1\n")
    proc = cli(str(spec), "--set", f"run.storage={tmp_path / 'store'}")
    assert proc.returncode == 2
    assert "broken.yaml:" in proc.stderr and "YAML syntax error" in proc.stderr
    assert not (tmp_path / "store").exists()


def test_cli_unwritable_storage_exits_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = cli(str(SPACES / "quickstart.yaml"), "--set", f"run.storage={blocker / 'sweeps'}")
    assert proc.returncode == 2
    assert "run.storage: cannot write to" in proc.stderr, proc.stderr
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("stem", ["quickstart", "hpo"])
def test_the_report_is_written_and_logged_to_the_mlflow_parent_run(smoke, stem):
    storage, _ = smoke
    report = storage / NAMES[stem] / "report"
    assert (report / ("arms.csv" if stem == "quickstart" else "trials.csv")).is_file()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name(NAMES[stem])
    parent = [r for r in client.search_runs([exp.experiment_id])
              if r.data.tags.get("sweep_role") == "parent"]
    assert len(parent) == 1
    logged = {a.path for a in client.list_artifacts(parent[0].info.run_id, "report")}
    assert {f"report/{p.name}" for p in report.iterdir()} == logged
