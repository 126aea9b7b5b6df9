"""Growing a study, without Ray: the plan diff (kept, added, changed, removed trials), the spec's
differing keys, and the --resume check that tells growth from a change (tests/test_grow.py runs
the sweeps)."""

from pathlib import Path

import pytest

from orchestrator._provenance import write_spec_yaml
from orchestrator.errors import ResumeError
from orchestrator.plan.design import build_plan
from orchestrator.plan.grow import diff_plans, spec_changes
from orchestrator.plan.model import Plan
from orchestrator.plan.record import ArmRecord, PlanRecord, TrialRecord, resolved_spec
from orchestrator.spec.load import load_spec
from orchestrator.tune.grow import check_growth

QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"


def record(*trials: tuple[str, str, int]) -> PlanRecord:
    arms = tuple(ArmRecord(a) for a in dict.fromkeys(t[1] for t in trials))
    return PlanRecord(arms=arms, trials=tuple(TrialRecord(*t) for t in trials))


def test_diff_keeps_equal_keys_and_adds_new_ones_in_the_new_order():
    saved = record(("k0", "a", 0), ("k1", "b", 0))
    new = record(("k0", "a", 0), ("k1", "b", 0), ("k2", "a", 1), ("k3", "c", 0))
    diff = diff_plans(saved, new)
    assert [t.key for t in diff.kept] == ["k0", "k1"]
    assert [t.key for t in diff.added] == ["k2", "k3"]
    assert diff.changed == () and diff.removed == () and not diff.same


def test_diff_pairs_changed_trials_by_arm_and_seed_and_lists_removed_ones():
    saved = record(("k0", "a", 0), ("k1", "a", 1), ("k2", "b", 0))
    new = record(("x0", "a", 0), ("k1", "a", 1), ("x3", "c", 0))
    diff = diff_plans(saved, new)
    assert [t.key for t in diff.kept] == ["k1"]
    assert [(o.key, n.key) for o, n in diff.changed] == [("k0", "x0")]
    assert [t.key for t in diff.added] == ["x3"]
    assert [t.key for t in diff.removed] == ["k2"]


def test_diff_of_a_plan_with_itself_is_the_same_and_a_renamed_arm_is_kept():
    saved = record(("k0", "a", 0), ("k1", "a", 1))
    assert diff_plans(saved, saved).same
    renamed = diff_plans(saved, record(("k0", "z", 0), ("k1", "z", 1)))
    assert renamed.same and len(renamed.kept) == 2


def test_spec_changes_names_dotted_keys():
    saved = {"base": {"train": {"epochs": 10, "lr": 1}}, "seeds": [0, 1], "name": "s"}
    new = {"base": {"train": {"epochs": 12, "lr": 1}, "data": {"name": "d"}}, "seeds": [0, 1]}
    assert spec_changes(saved, new) == ["base.data", "base.train.epochs", "name"]
    assert spec_changes(saved, saved) == []


def quickstart(*sets: str) -> Plan:
    spec = load_spec(QUICKSTART, list(sets))
    return build_plan(spec, source="quickstart.yaml", data_required=False)


def saved(tmp_path: Path, plan: Plan) -> Path:
    return write_spec_yaml(tmp_path, resolved_spec(plan))


def test_the_same_spec_is_no_growth_and_no_saved_spec_is_none(tmp_path):
    plan = quickstart()
    assert check_growth(plan, tmp_path / "spec.yaml") is None
    assert check_growth(plan, saved(tmp_path, plan)) is None


def test_more_seeds_or_arms_grow_the_study(tmp_path):
    path = saved(tmp_path, quickstart())
    seeds = check_growth(quickstart("seeds=[0,1,2,3,4]"), path)
    assert seeds is not None and seeds.keys == ("seeds",)
    assert (len(seeds.diff.kept), len(seeds.diff.added)) == (9, 6)
    assert {t.seed for t in seeds.diff.added} == {3, 4}
    arms = check_growth(quickstart("axes.model.locality.act=[relu6,hs]"), path)
    assert arms is not None and len(arms.diff.kept) == 9 and len(arms.diff.added) == 3
    assert {t.arm for t in arms.diff.added} == {"act=hs"}


def test_a_recipe_change_is_refused_naming_the_key_and_both_ways_out(tmp_path):
    path = saved(tmp_path, quickstart())
    with pytest.raises(ResumeError) as exc:
        check_growth(quickstart("base.train.lr=1e-3", "seeds=[0,1,2,3]"), path)
    text = str(exc.value)
    assert "base.train.lr" in text and "changes 9 of the sweep's trials" in text
    assert "--set name=<new name>" in text and "--rerun-changed" in text
    assert "): base.train.lr differ from" in text       # seeds only grow: not named


def test_rerun_changed_is_refused_when_arm_stopping_would_mix_old_and_new_trials(tmp_path):
    path = saved(tmp_path, quickstart())
    everything = check_growth(quickstart("base.train.lr=1e-3"), path, rerun_changed=True)
    assert everything is not None and len(everything.diff.changed) == 9
    named_arm = check_growth(quickstart("arms={extra: {model.locality.act: hs}}"), path)
    assert named_arm is not None and {t.arm for t in named_arm.diff.added} == {"extra"}
    # One arm's recipe changed under arm-level stopping: the others' decisions rest on it.
    path = saved(tmp_path, quickstart("arms={extra: {model.locality.act: hs}}"))
    with pytest.raises(ResumeError, match="arm-level early stopping decisions were taken"):
        check_growth(quickstart("arms={extra: {model.locality.act: hs+eca}}"), path,
                     rerun_changed=True)


def test_fewer_seeds_other_settings_and_unfinished_sweeps_are_refused(tmp_path):
    path = saved(tmp_path, quickstart())
    with pytest.raises(ResumeError, match="grow, not shrink"):
        check_growth(quickstart("seeds=[0,1]"), path)
    with pytest.raises(ResumeError, match=r"not the sweep saved .*run\.max_concurrent"):
        check_growth(quickstart("seeds=[0,1,2,3]", "run.max_concurrent=1"), path)
    # Tune's state of unfinished trials: finish the sweep with its own spec first.
    with pytest.raises(ResumeError, match="9 unfinished trials"):
        check_growth(quickstart("seeds=[0,1,2,3]"), path, tune_saved=True)
