"""Arm-level decisions as pure functions: rungs, halving over arm means, the paired-test race,
and their Parquet log. Values are checked against scipy, relations in both modes."""

import math

import pytest
from scipy import stats

from orchestrator.scheduling import decisions as racing

REFS = {"a": "baseline", "b": "baseline", "c": "baseline", "d": "baseline"}
ORDER = ["baseline", "a", "b", "c", "d"]


def halving(values, mode="max", protected=("baseline",), eta=2.0):
    out = racing.decide_halving(rung=1, milestone=3, values=values, order=ORDER,
                                references=REFS, protected=protected, reduction_factor=eta,
                                mode=mode, metric="m")
    return {d.arm: d for d in out}


@pytest.mark.parametrize("grace,eta,max_t,expected", [
    (1, 3, 81, [1, 3, 9, 27]),
    (3, 2, 15, [3, 6, 12]),
    (5, 2, 10, [5]),
    (4, 1.5, 12, [4, 6, 9]),
    (10, 2, 10, []),
])
def test_milestones_are_integer_epochs_below_max_t(grace, eta, max_t, expected):
    assert racing.milestones(grace, eta, max_t) == expected


def test_halving_keeps_the_best_ceil_n_over_eta_by_mean_and_stops_whole_arms():
    values = {"baseline": {0: 0.1, 1: 0.2}, "a": {0: 0.9, 1: 0.7}, "b": {0: 0.5, 1: 0.6},
              "c": {0: 0.3, 1: 0.4}, "d": {0: 0.95, 1: 0.05}}
    got = halving(values)
    # means: a 0.8, b 0.55, d 0.5, c 0.35, baseline 0.15; keep ceil(5/2) = 3
    assert [got[a].action for a in ("a", "b", "d", "c", "baseline")] == \
        ["promote", "promote", "promote", "stop", "protected"]
    assert got["c"].cutoff == pytest.approx(0.5) and got["c"].arm_mean == pytest.approx(0.35)
    assert got["c"].reason == ("arm: c mean m=0.35 over 2 seeds below rung-1 cutoff 0.5 at epoch 3 "
                               "(rank 4 of 5; the best 3 go on)")


def test_halving_in_min_mode_ranks_low_first_and_says_above():
    values = {"baseline": {0: 1.0}, "a": {0: 0.2}, "b": {0: 0.9}, "c": {0: 0.5}}
    got = halving(values, mode="min")
    assert got["a"].action == got["c"].action == "promote"
    assert got["b"].action == "stop" and "above rung-1 cutoff 0.5" in got["b"].reason
    assert got["baseline"].action == "protected"


def test_halving_breaks_ties_by_plan_order_and_never_stops_protected_arms():
    values = {"baseline": {0: 0.0}, "a": {0: 0.5}, "b": {0: 0.5}, "c": {0: 0.5}}
    got = halving(values)                       # keep 2: baseline last but protected
    assert [got[a].action for a in "abc"] == ["promote", "promote", "stop"]
    got = halving(values, protected=("baseline", "c"))
    assert got["c"].action == "protected" and got["b"].action == "promote"


def test_a_diverged_arm_stops_and_a_diverged_reference_does_not():
    values = {"baseline": {0: math.nan}, "a": {0: 0.5, 1: math.inf}, "b": {0: 0.1, 1: 0.2}}
    got = halving(values, eta=1.01)
    assert got["a"].action == "stop" and "diverged" in got["a"].reason
    assert got["baseline"].action == "protected" and got["b"].action == "promote"


def test_paired_differences_equal_scipys_one_sided_paired_t_test():
    arm = {0: 0.61, 1: 0.55, 2: 0.58}
    ref = {0: 0.70, 1: 0.66, 2: 0.64}
    d = racing.decide_paired(rung=2, milestone=6, arm="a", reference="baseline", arm_values=arm,
                             ref_values=ref, protected=("baseline",), confidence=0.95,
                             margin=0.0, mode="max", metric="m")
    expected = stats.ttest_rel([arm[s] for s in range(3)], [ref[s] for s in range(3)],
                               alternative="less")
    assert d.t_stat == pytest.approx(expected.statistic)
    assert d.p_value == pytest.approx(expected.pvalue)
    assert d.diff_mean == pytest.approx(-0.0867, abs=1e-4) and d.n_pairs == 3
    assert d.action == "stop" and d.reason.startswith("arm: a worse than baseline at rung-2")


def test_paired_test_in_min_mode_flips_the_sign_and_respects_the_margin():
    loss = {0: 0.50, 1: 0.52, 2: 0.49}
    ref = {0: 0.45, 1: 0.48, 2: 0.46}           # the arm's loss is higher: worse
    kw = dict(rung=1, milestone=3, arm="a", reference="baseline", ref_values=ref,
              protected=("baseline",), confidence=0.95, mode="min", metric="val/loss")
    worse = racing.decide_paired(arm_values=loss, margin=0.0, **kw)
    assert worse.action == "stop" and worse.diff_mean == pytest.approx(-0.04)
    lenient = racing.decide_paired(arm_values=loss, margin=0.1, **kw)
    assert lenient.action == "promote"
    better = racing.decide_paired(arm_values={s: v - 0.2 for s, v in loss.items()}, margin=0.0,
                                  **kw)
    assert better.action == "promote" and better.diff_mean > 0


def test_paired_test_edge_cases():
    kw = dict(rung=1, milestone=3, arm="a", reference="baseline", protected=("baseline",),
              confidence=0.95, margin=0.0, mode="max", metric="m")
    single = racing.decide_paired(arm_values={0: 0.1}, ref_values={0: 0.9}, **kw)
    assert single.action == "promote" and "too few" in single.reason
    same_gap = racing.decide_paired(arm_values={0: 0.1, 1: 0.2}, ref_values={0: 0.2, 1: 0.3},
                                    **kw)
    assert same_gap.diff_sd == 0 and same_gap.action == "stop"     # irace's zero-variance rule
    nan = racing.decide_paired(arm_values={0: math.nan, 1: 0.2}, ref_values={0: 0.2, 1: 0.3},
                               **kw)
    assert nan.action == "stop" and "diverged" in nan.reason
    protected = racing.decide_paired(arm_values={0: 0.0, 1: 0.0}, ref_values={0: 1.0, 1: 1.0},
                                     **{**kw, "protected": ("baseline", "a")})
    assert protected.action == "protected"


def test_log_round_trips_through_parquet(tmp_path):
    assert racing.read_log(tmp_path) == ([], [])
    values = [racing.RungValue("a", 0, "k0", 1, 3, 4, 0.5), racing.RungValue("b", 1, "k1", 1, 3, 3,
                                                                              math.nan)]
    decisions = list(halving({"baseline": {0: 0.1}, "a": {0: 0.9}, "b": {0: 0.5}}).values())
    racing.write_rungs(tmp_path, values)
    racing.write_decisions(tmp_path, decisions)
    got_values, got_decisions = racing.read_log(tmp_path)
    assert got_values[0] == values[0] and math.isnan(got_values[1].value)
    assert [d.arm for d in got_decisions] == [d.arm for d in decisions]
    assert got_decisions[1] == decisions[1]
