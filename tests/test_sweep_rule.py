"""Seeds added until each question is decided, end to end on Ray Tune, MLflow (sqlite) and
Parquet: the quick start with `seeds: {start: 2, max: 4}` runs every arm at seeds 0 and 1, then
adds paired seeds to its undecided questions in stages; the trials it ran are exactly those the
rule derives from its own table, each once in Parquet and MLflow. A driver killed in a later
stage, resumed with `--resume`, ends with the same trials and the same numbers as the run that
was not killed.

The sweeps run at 2 epochs of 4 steps with the quick start's arm-level halving at epoch 1 (its
decisions meet the added seeds); tests/test_stages.py checks the stage logic without Ray.
"""

import os
from pathlib import Path

import driver_process
import pandas as pd
import pytest
import yaml
from sweep_cli import rows, run

from orchestrator.plan.design import build_plan
from orchestrator.spec.load import load_spec
from orchestrator.tune.stages import first_members, next_stage

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"
pytestmark = pytest.mark.timeout(1200)
RULE = ("--set", "seeds={start: 2, max: 4}", "--set", "base.train.epochs=2",
        "--set", "base.train.steps_per_epoch=4", "--set", "search.scheduler.asha.grace_period=1")


def mlflow_keys(storage: Path, name: str) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    return sorted(r.data.tags["trial_key"]
                  for r in client.search_runs([exp.experiment_id], max_results=1000)
                  if r.data.tags.get("sweep_role") == "trial")


def replayed(args: tuple, table: pd.DataFrame) -> set[tuple[str, int]]:
    """The (arm, seed) pairs the rule runs, derived again stage by stage from the final table."""
    spec = load_spec(QUICKSTART, [a for a in args[1:] if a != "--set"])
    plan = build_plan(spec, source="quickstart.yaml", data_required=False)
    stage = plan.restricted(first_members(plan))
    flat = table.reset_index()
    while (step := next_stage(plan, stage, flat)).plan is not None:
        stage = step.plan
    return {(t.arm, t.seed) for t in stage.trials}


@pytest.fixture(scope="module")
def ruled(ray_session, tmp_path_factory):
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    storage = tmp_path_factory.mktemp("rule")
    args = (QUICKSTART, "--set", f"run.storage={storage}", *RULE)
    code, text = run(*args)
    yield storage, args, code, text
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved


def test_the_rule_runs_the_start_seeds_then_adds_paired_seeds_to_undecided_questions(ruled):
    storage, args, code, text = ruled
    assert code == 0, text[-3000:]
    sweep = storage / "quickstart"
    table = rows(sweep)
    ran = {(a, int(s)) for a, s in zip(table["arm"], table["seed"], strict=True)}
    assert {(a, s) for a in ("baseline", "localvit", "act=relu6") for s in (0, 1)} <= ran
    assert len(table) == len(ran) < 3 * 4 or "reached its most seeds" in text
    assert "note: seeds: " in text and "Adding seed(s) 2" in text
    # Exactly the trials the rule derives from the table, each once in Parquet and MLflow, and
    # the plan record lists them.
    assert ran == replayed(args, table)
    assert mlflow_keys(storage, "quickstart") == sorted(table.index)
    record = yaml.safe_load((sweep / "spec.yaml").read_text())
    assert sorted(t["key"] for t in record["plan"]["trials"]) == sorted(table.index)
    assert record["seeds"]["start"] == 2 and record["seeds"]["max"] == 4
    assert set(table["status"]) <= {"completed", "stopped"}


def test_a_driver_killed_in_a_later_stage_resumes_to_the_same_trials(ruled, tmp_path):
    storage, _, code, text = ruled
    assert code == 0, text[-3000:]
    expected = rows(storage / "quickstart")
    args = [str(QUICKSTART), "--set", f"run.storage={tmp_path}", *RULE]
    log = tmp_path / "driver.log"
    proc = driver_process.start(args, log)
    try:
        # The second stage is under way: seed 2 of some arm has finished an epoch.
        driver_process.wait_for(proc, log, lambda t: "Adding seed(s)" in t
                                and "/seed2 epoch 1 " in t.split("Adding seed(s)", 1)[1])
    finally:
        driver_process.kill(proc)
    assert "Report:" not in log.read_text()
    code, text = run(*args, "--resume")
    assert code == 0, text[-3000:]
    after = rows(tmp_path / "quickstart")
    assert sorted(after.index) == sorted(expected.index)
    pd.testing.assert_series_equal(after["metric_final"], expected["metric_final"])
    assert mlflow_keys(tmp_path, "quickstart") == sorted(after.index)
