"""Seeds added until each question is decided, without Ray: which trials each stage runs, what
stops the loop (decided, max, a stopped arm, the budget), and the stage a resumed run starts from
(tests/test_sweep_rule.py runs the sweeps)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from orchestrator._provenance import write_spec_yaml
from orchestrator.errors import ResumeError
from orchestrator.plan.design import build_plan
from orchestrator.plan.model import Plan
from orchestrator.plan.record import resolved_spec
from orchestrator.sequential import decide
from orchestrator.spec.load import load_spec
from orchestrator.tune.grow import check_growth, keep_budget
from orchestrator.tune.stages import (
    current_stage,
    describe,
    design_of,
    first_members,
    next_stage,
)

QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"


def rule_plan(*sets: str, rule: str = "{start: 3, max: 6}") -> Plan:
    spec = load_spec(QUICKSTART, [f"seeds={rule}", *sets])
    return build_plan(spec, source="quickstart.yaml", data_required=False)


def rows_for(stage: Plan, values: dict[tuple[str, int], float], status: str = "completed",
             epochs: int = 10, stopped: tuple[str, ...] = ()) -> pd.DataFrame:
    """trials.parquet's rows for every trial of `stage`, with the given final metric."""
    out = []
    for t in stage.trials:
        out.append(dict(trial_key=t.key, arm=t.arm, seed=t.seed,
                        status="stopped" if t.arm in stopped else status,
                        metric_final=values[(t.arm, t.seed)], epochs_run=epochs,
                        wall_time_s=60.0))
    return pd.DataFrame(out)


def members(plan: Plan) -> set[tuple[str, int]]:
    return {(t.arm, t.seed) for t in plan.trials}


def gains(plan: Plan, diff: dict[str, list[float]], base: float = 0.5) -> dict:
    """Final metrics: the baseline at `base` + a little per seed, every other arm at the
    baseline plus its listed difference for that seed."""
    out = {}
    for seed in range(plan.spec.seed_rule.max):
        ref = base + 0.01 * seed
        out[("baseline", seed)] = ref
        for arm in plan.arms:
            if arm.name != "baseline":
                out[(arm.name, seed)] = ref + diff[arm.name][seed]
    return out


def test_the_first_stage_is_every_arm_at_the_start_seeds_and_the_dry_run_says_so():
    plan = rule_plan()
    assert len(plan.trials) == 3 * 6                       # every trial the rule may run
    assert members(plan.restricted(first_members(plan))) == {
        (a.name, s) for a in plan.arms for s in range(3)}
    assert plan.restricted(first_members(plan)).seeds_by_arm == {
        a.name: [0, 1, 2] for a in plan.arms}


def test_an_undecided_question_gets_the_next_seed_for_its_arm_and_reference_only():
    plan = rule_plan()
    stage = plan.restricted(first_members(plan))
    arms = [a.name for a in plan.arms]
    decided, noisy = arms[1], arms[2]
    # One arm gains the same +0.2 on every seed (decided at the first look), the other wobbles.
    values = gains(plan, {decided: [0.2] * 6, noisy: [0.05, -0.04, 0.03, 0.0, 0.0, 0.0]})
    step = next_stage(plan, stage, rows_for(stage, values))
    assert step.verdicts[(decided, "baseline")].verdict == "better"
    assert step.verdicts[(decided, "baseline")].decided_at == 3
    assert step.verdicts[(noisy, "baseline")].verdict == "undecided"
    assert set(step.added) == {(noisy, 3), ("baseline", 3)}
    assert members(step.plan) == members(stage) | {(noisy, 3), ("baseline", 3)}
    assert step.plan.seeds_by_arm[decided] == [0, 1, 2]
    assert "Adding seed(s) 3" in describe(step) and "better at 3 seeds" in describe(step)


def test_the_verdicts_are_the_rules_on_the_paired_differences_in_seed_order():
    plan = rule_plan()
    stage = plan.restricted(first_members(plan))
    arms = [a.name for a in plan.arms]
    rng = np.random.default_rng(3)
    diff = {a: list(rng.normal(0.1, 0.05, 6)) for a in arms[1:]}
    step = next_stage(plan, stage, rows_for(stage, gains(plan, diff)))
    expected = decide(design_of(plan.spec.seed_rule),
                      {f"{a} vs baseline": diff[a][:3] for a in arms[1:]})
    for a in arms[1:]:
        got, want = step.verdicts[(a, "baseline")], expected[f"{a} vs baseline"]
        assert got.verdict == want.verdict and got.state.p == pytest.approx(want.p)


def test_the_loop_ends_at_max_seeds_with_n_s():
    plan = rule_plan(rule="{start: 3, max: 4}")
    noise = [0.05, -0.04, 0.03, -0.05]
    values = gains(plan, {a.name: noise for a in plan.arms if a.name != "baseline"})
    stage = plan.restricted(first_members(plan))
    step = next_stage(plan, stage, rows_for(stage, values))
    assert step.plan is not None and {s for _, s in step.added} == {3}
    final = next_stage(plan, step.plan, rows_for(step.plan, values))
    assert final.plan is None and "reached its most seeds" in final.why_done
    assert {v.verdict for v in final.verdicts.values()} == {"n.s."}


def test_an_arm_stopped_early_gets_no_seeds():
    plan = rule_plan()
    stage = plan.restricted(first_members(plan))
    arms = [a.name for a in plan.arms]
    noise = [0.05, -0.04, 0.03, 0.0, 0.0, 0.0]
    values = gains(plan, {a: noise for a in arms[1:]})
    stopped = next(a for a in arms[1:] if a not in plan.protected)
    step = next_stage(plan, stage, rows_for(stage, values, stopped=(stopped,)))
    assert all(arm != stopped for arm, _ in step.added)
    assert f"{stopped} vs baseline: arm stopped early" in describe(step)


def test_the_budget_stops_a_batch_that_does_not_fit():
    plan = rule_plan("run.budget={trial_epochs: 95}")
    stage = plan.restricted(first_members(plan))
    noise = [0.05, -0.04, 0.03, 0.0, 0.0, 0.0]
    values = gains(plan, {a.name: noise for a in plan.arms if a.name != "baseline"})
    # 9 trials x 10 epochs spent; the next batch (3 trials, at most 30 epochs) would reach 120.
    step = next_stage(plan, stage, rows_for(stage, values))
    assert step.plan is None and "run.budget.trial_epochs: 90 of 95 spent" in step.why_done
    roomy = rule_plan("run.budget={trial_epochs: 120}")
    assert next_stage(roomy, roomy.restricted(first_members(roomy)),
                      rows_for(stage, values)).plan is not None


def test_a_resumed_run_starts_from_the_saved_stage_and_a_changed_rule_is_refused(tmp_path):
    plan = rule_plan(f"run.storage={tmp_path}")
    grown = plan.restricted(first_members(plan) | {("baseline", 3)})
    folder = tmp_path / plan.spec.name
    assert members(current_stage(plan, folder)) == members(plan.restricted(first_members(plan)))
    write_spec_yaml(folder, resolved_spec(grown), {})
    assert members(current_stage(plan, folder)) == members(grown)
    assert check_growth(current_stage(plan, folder), folder / "spec.yaml") is None
    other = rule_plan(f"run.storage={tmp_path}", rule="{start: 3, max: 8}")
    with pytest.raises(ResumeError, match=r"seeds: the saved sweep .* cannot change once it ran"):
        check_growth(current_stage(other, folder), folder / "spec.yaml")
    listed = build_plan(load_spec(QUICKSTART, [f"run.storage={tmp_path}", "seeds=[0,1,2,3]"]),
                        source="quickstart.yaml", data_required=False)
    with pytest.raises(ResumeError, match="seeds: the saved sweep"):
        check_growth(listed, folder / "spec.yaml")


def test_the_budget_may_change_on_resume(tmp_path):
    plan = rule_plan(f"run.storage={tmp_path}", "run.budget={trial_epochs: 95}")
    folder = tmp_path / plan.spec.name
    write_spec_yaml(folder, resolved_spec(plan.restricted(first_members(plan))), {})
    raised = rule_plan(f"run.storage={tmp_path}", "run.budget={trial_epochs: 200}")
    assert check_growth(current_stage(raised, folder), folder / "spec.yaml") is None
    keep_budget(current_stage(raised, folder), folder)
    saved = yaml.safe_load((folder / "spec.yaml").read_text())
    assert saved["run"]["budget"]["trial_epochs"] == 200
    assert len(saved["plan"]["trials"]) == 9
    other = rule_plan(f"run.storage={tmp_path}", "run.budget={trial_epochs: 95}",
                      "run.max_concurrent=1")
    with pytest.raises(ResumeError, match="run.max_concurrent differ"):
        check_growth(current_stage(other, folder), folder / "spec.yaml")
