"""orchestrator.report.stats against known answers: planted effects, null arms, scipy and
statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from orchestrator.report import stats


def _planted(effect: float, n: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A reference arm and an arm better by `effect` plus its own noise, on shared seeds."""
    rng = np.random.default_rng(seed)
    reference = 0.70 + rng.normal(0.0, 0.02, n)           # seed-to-seed variation, shared
    arm = reference + effect + rng.normal(0.0, 0.005, n)   # the arm's own noise
    return arm, reference


def test_planted_effect_is_significant_in_the_direction_of_the_mode():
    arm, ref = _planted(0.03)
    comp = stats.paired_comparison(arm, ref)
    assert comp.n == 5 and comp.p_value < 0.01
    assert comp.ci_low > 0 and comp.d_z > 2
    assert stats.verdict(comp.diff_mean, comp.p_value, "max") == "better"
    # The same numbers as a loss: larger is worse.
    assert stats.verdict(comp.diff_mean, comp.p_value, "min") == "worse"


def test_null_arm_is_not_significant():
    arm, ref = _planted(0.0)
    comp = stats.paired_comparison(arm, ref)
    assert comp.p_value > 0.05
    assert comp.ci_low < 0 < comp.ci_high
    assert stats.verdict(comp.diff_mean, comp.p_value, "max") == "n.s."


def test_paired_comparison_equals_scipy():
    arm, ref = _planted(0.01, n=6, seed=3)
    comp = stats.paired_comparison(arm, ref, confidence=0.9)
    res = sps.ttest_rel(arm, ref)
    ci = res.confidence_interval(0.9)
    d = arm - ref
    assert comp.t == pytest.approx(float(res.statistic), rel=1e-12)
    assert comp.p_value == pytest.approx(float(res.pvalue), rel=1e-12)
    assert (comp.ci_low, comp.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert comp.diff_mean == pytest.approx(d.mean())
    assert comp.diff_sd == pytest.approx(d.std(ddof=1))
    assert comp.d_z == pytest.approx(d.mean() / d.std(ddof=1))
    # 6 pairs: the smallest two-sided Wilcoxon p is 1/32 < 0.05, so it is reported, as scipy's.
    assert comp.wilcoxon_p == pytest.approx(float(sps.wilcoxon(arm, ref).pvalue), rel=1e-12)
    assert comp.wilcoxon_note == ""


def test_three_seeds_report_no_wilcoxon_and_say_why():
    arm, ref = _planted(0.05, n=3)
    comp = stats.paired_comparison(arm, ref)
    assert comp.p_value is not None
    assert comp.wilcoxon_p is None
    assert "0.25" in comp.wilcoxon_note and "never be significant" in comp.wilcoxon_note
    assert stats.wilcoxon_min_p(3) == pytest.approx(0.25)
    assert stats.wilcoxon_min_p(5) == pytest.approx(0.0625)
    assert stats.wilcoxon_min_p(6) == pytest.approx(1 / 32)


def test_holm_equals_statsmodels_and_skips_missing():
    ps = [0.01, None, 0.04, 0.03, float("nan"), 0.2]
    got = stats.holm(ps)
    want = multipletests([0.01, 0.04, 0.03, 0.2], method="holm")[1]
    assert got[1] is None and got[4] is None
    assert [got[i] for i in (0, 2, 3, 5)] == pytest.approx(list(want), rel=1e-12)
    assert stats.holm([None, None]) == [None, None]


def test_summary_mean_std_and_t_interval():
    values = [0.91, 0.93, 0.92, 0.95]
    s = stats.summarize(values)
    low, high = sps.t.interval(0.95, 3, loc=np.mean(values), scale=sps.sem(values))
    assert (s.n, s.mean, s.std) == (4, pytest.approx(np.mean(values)),
                                    pytest.approx(np.std(values, ddof=1)))
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high))
    one = stats.summarize([0.5, float("nan")])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.std) and math.isnan(one.ci_low)


def test_degenerate_comparisons_have_no_test_and_a_reason():
    same = stats.paired_comparison([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])   # constant difference
    assert same.p_value is None and same.t is None and "zero variance" in same.note
    assert same.diff_mean == pytest.approx(0.1)
    single = stats.paired_comparison([0.9], [0.8])
    assert single.n == 1 and single.p_value is None and single.diff_mean == pytest.approx(0.1)
    assert stats.verdict(0.1, None, "max") == "n.s."
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        stats.paired_comparison([1.0, float("nan")], [1.0, 2.0])


def test_verdict_is_sign_aware():
    assert stats.verdict(-0.2, 0.001, "min") == "better"
    assert stats.verdict(-0.2, 0.001, "max") == "worse"
    assert stats.verdict(0.2, 0.05, "max") == "n.s."        # not below alpha
    with pytest.raises(ValueError, match="mode"):
        stats.verdict(0.1, 0.01, "up")


def test_better_and_best_follow_the_mode():
    from orchestrator.sinks.base import best_of, is_better

    assert is_better(0.9, 0.8, "max") and not is_better(0.8, 0.9, "max")
    assert is_better(0.8, 0.9, "min") and not is_better(0.9, 0.8, "min")
    assert is_better(0.5, None, "max") and is_better(0.5, None, "min")
    assert not is_better(0.5, 0.5, "max") and not is_better(0.5, 0.5, "min")
    assert best_of([0.3, 0.9, 0.1], "max") == 0.9 and best_of([0.3, 0.9, 0.1], "min") == 0.1
    assert best_of([], "max") is None
