"""orchestrator.sequential: boundaries against published values and an independent Monte Carlo,
the zero-variance cases, alpha recycling against a plain-loop graphical procedure, and the
simulation proof of issue 23 (family-wise error under the null; power and seeds at a 1-SD effect
against fixed 3 and fixed max seeds with Holm)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from orchestrator.sequential import (
    Design,
    boundary_p,
    decide,
    decide_arrays,
    look_statistics,
    seeds_wanted,
)
from orchestrator.sequential.bounds import nominal_p, spent, z_bounds
from orchestrator.sequential.simulation import holm_reject, simulate

# Lan-DeMets spending, two-sided 0.05 (0.025 a side), five equally spaced looks: the table of
# the Lan-DeMets program (Reboussin, DeMets, Kim & Lan 2000) and gsDesign.
OBF_5 = (4.877, 3.357, 2.680, 2.290, 2.031)
POCOCK_5 = (2.438, 2.427, 2.410, 2.397, 2.386)


@pytest.mark.parametrize(("spending", "published"),
                         [("obrien-fleming", OBF_5), ("pocock", POCOCK_5)])
def test_five_equal_looks_match_published_boundaries(spending, published):
    bounds = z_bounds(0.05, spending, (1, 2, 3, 4, 5), 5)
    assert bounds == pytest.approx(published, abs=1e-3)


@pytest.mark.parametrize("spending", ["obrien-fleming", "pocock"])
def test_boundaries_spend_alpha_on_simulated_brownian_paths(spending):
    """Unequal looks: the share of canonical z paths crossed by look k is f(t_k) (4 MC s.e.)."""
    looks, max_n, paths = (3, 4, 6, 9, 10), 10, 400_000
    bounds = np.array(z_bounds(0.05, spending, looks, max_n))
    rng = np.random.default_rng(7)
    steps = rng.standard_normal((paths, max_n))
    z = np.cumsum(steps, axis=1)[:, [n - 1 for n in looks]] / np.sqrt(looks)
    first = np.cumsum(np.abs(z) >= bounds, axis=1) > 0
    for k, n in enumerate(looks):
        want = spent(0.05, spending, n / max_n)
        se = math.sqrt(want * (1 - want) / paths)
        assert abs(first[:, k].mean() - want) < 4 * se + 1e-5, (k, first[:, k].mean(), want)


def test_a_single_look_is_the_fixed_sample_test():
    assert z_bounds(0.05, "obrien-fleming", (8,), 8) == pytest.approx((sps.norm.isf(0.025),))
    assert z_bounds(0.05, "pocock", (8,), 8) == pytest.approx((sps.norm.isf(0.025),))
    plain = Design(start=6, max=6, calibrate=False)
    assert boundary_p(plain, 0.05) == pytest.approx((0.05,))
    # Calibrated, one look: the t-test's own level, up to Monte-Carlo error.
    assert boundary_p(Design(start=6, max=6), 0.05)[0] == pytest.approx(0.05, rel=0.03)
    rng = np.random.default_rng(3)
    for _ in range(20):
        d = list(rng.normal(0.8, 1.0, 6))
        want = sps.ttest_1samp(d, 0.0).pvalue < 0.05
        assert (decide(plain, {"q": d})["q"].verdict != "n.s.") == want


def test_spending_shape_obrien_fleming_is_late_and_pocock_is_flat():
    of = z_bounds(0.05, "obrien-fleming", tuple(range(3, 11)), 10)
    po = z_bounds(0.05, "pocock", tuple(range(3, 11)), 10)
    assert all(a > b for a, b in zip(of, of[1:], strict=False))
    assert max(po) - min(po) < 0.2 < of[0] - of[-1]
    assert of[-1] < po[-1] and of[0] > po[0]


@pytest.mark.parametrize("spending", ["obrien-fleming", "power:8"])
def test_boundaries_loosen_as_the_level_rises(spending):
    """Recycling raises a question's level; its calibrated boundaries must then be no stricter at
    any look, or a look that crossed at a lower level would stop crossing."""
    design = Design(spending=spending, start=3, max=10)
    rows = np.array([boundary_p(design, 0.05 / k) for k in (5, 4, 3, 2, 1)])
    assert (np.diff(rows, axis=0) >= 0).all()
    assert rows[-1, -1] > rows[0, -1] * 3


def test_identical_differences_are_evidence_and_zeros_are_not():
    design = Design(start=3, max=8)
    states = decide(design, {"up": [0.033] * 3, "down": [-0.01] * 3, "zero": [0.0] * 3})
    assert states["up"].verdict == "better" and states["up"].decided_at == 3
    assert states["up"].t == math.inf and states["up"].p == 0.0
    assert states["down"].verdict == "worse"
    assert states["zero"].verdict == "undecided" and states["zero"].p == 1.0
    assert states["zero"].needs_more
    done = decide(design, {"zero": [0.0] * 8})["zero"]
    assert done.verdict == "n.s." and not done.needs_more
    # Float noise of arm - reference on a grid (0.733 - 0.7 vs 0.833 - 0.8) is still zero SD.
    grid = [0.733 - 0.7, 0.833 - 0.8, 0.633 - 0.6]
    assert decide(design, {"pvt": grid})["pvt"].verdict == "better"


def test_fewer_seeds_than_start_wait():
    state = decide(Design(start=3, max=8), {"q": [0.5, 0.7]})["q"]
    assert state.verdict == "undecided" and state.n == 2 and math.isnan(state.p)
    assert seeds_wanted(Design(start=3, max=8), {"q": state}) == {"q": 3}


def _first_p_between(design: Design, low: float, high: float, n: int) -> list[float]:
    """Seeded differences whose t-test p at n seeds lies in (low, high)."""
    rng = np.random.default_rng(11)
    for _ in range(100_000):
        d = list(rng.normal(1.0, 1.0, n))
        if low < sps.ttest_1samp(d, 0.0).pvalue < high:
            return d
    raise AssertionError("no such draw")


def test_a_rejection_recycles_its_alpha_to_the_open_questions():
    design = Design(start=4, max=4, calibrate=False)     # one look: levels are plain p
    middling = _first_p_between(design, 0.03, 0.045, 4)
    alone = decide(design, {"a": middling, "null": [0.3, -0.2, 0.1, -0.25]})
    assert alone["a"].verdict == "n.s." and alone["a"].level == pytest.approx(0.025)
    helped = decide(design, {"a": middling, "sure": [0.033] * 4})
    assert helped["sure"].verdict == "better" and helped["sure"].level == pytest.approx(0.025)
    assert helped["a"].verdict == "better" and helped["a"].level == pytest.approx(0.05)


def _graph_reference(design: Design, p: np.ndarray) -> list[int]:
    """Maurer & Bretz's procedure written as weights on a graph, one study, plain loops: the
    stage at which each question is rejected (-1: never)."""
    m, n_looks = p.shape
    weight = [1.0 / m] * m
    stage = [-1] * m
    for j in range(n_looks):
        changed = True
        while changed:
            changed = False
            for i in range(m):
                if stage[i] >= 0:
                    continue
                bp = boundary_p(design, design.alpha * weight[i])
                if any(p[i, k] < bp[k] for k in range(j + 1) if not math.isnan(p[i, k])):
                    stage[i] = j
                    still = [q for q in range(m) if stage[q] < 0]
                    for q in still:
                        weight[q] += weight[i] / len(still)
                    weight[i] = 0.0
                    changed = True
    return stage


def test_vectorised_procedure_matches_the_graph_written_out():
    design = Design(start=3, max=7)
    rng = np.random.default_rng(5)
    d = rng.normal(0.0, 1.0, (300, 4, 7)) + rng.choice([0.0, 1.5, 3.0], (300, 4, 1))
    d[:20, 0, 5:] = np.nan                                  # a question lagging behind
    _, _, p = look_statistics(design, d)
    got = decide_arrays(design, p).stage
    rejected = 0
    for s in range(d.shape[0]):
        want = _graph_reference(design, p[s])
        assert list(got[s]) == want, s
        rejected += sum(w >= 0 for w in want)
    assert rejected > 200                                   # the comparison has teeth


def test_decisions_are_a_pure_function_of_the_data_so_far():
    design = Design(start=3, max=10)
    rng = np.random.default_rng(2)
    full = {f"q{i}": list(rng.normal(0.9 * i, 1.0, 10)) for i in range(5)}
    history = [decide(design, {k: v[:n] for k, v in full.items()}) for n in range(3, 11)]
    final = history[-1]
    for states in history:
        for name, st in states.items():
            if st.verdict in ("better", "worse"):
                assert final[name].verdict == st.verdict and final[name].n == st.n
    assert decide(design, {k: v[:6] for k, v in full.items()}) == history[3]


def test_seeds_wanted_follows_the_look_schedule():
    design = Design(start=3, max=8, batch=2)
    assert design.looks() == (3, 5, 7, 8)
    states = decide(design, {"open": [0.1, -0.2, 0.3, 0.0], "done": [0.05] * 4})
    assert states["open"].n == 3 and states["done"].n == 3
    assert seeds_wanted(design, states) == {"open": 5, "done": 3}
    last = decide(design, {"open": [0.1, -0.2, 0.3, 0.0, 0.1, -0.1, 0.2]})
    assert seeds_wanted(design, last) == {"open": 8}


def test_localvit_like_effects_decide_at_start_or_soon_after():
    design = Design(start=3, max=8)
    rng = np.random.default_rng(23)
    diffs = {f"backbone{i}": list(rng.normal(0.23, 0.02, 8)) for i in range(4)}
    diffs["pvt"] = [0.033] * 8
    final = decide(design, diffs)
    assert all(st.verdict == "better" for st in final.values())
    assert final["pvt"].n == 3
    assert max(st.n for st in final.values()) <= 5


def test_holm_reject_steps_down():
    p = np.array([[0.001, 0.04, 0.012, 0.5], [0.02, 0.02, 0.02, 0.02]])
    assert holm_reject(p, 0.05).tolist() == [[True, False, True, False], [False] * 4]


def test_null_studies_keep_the_family_wise_error():
    """Issue 23 item 4: 2,000 null studies, 5 questions; any better/worse verdict at most
    alpha + 3 Monte-Carlo standard errors, for the default and the Pocock-type rule."""
    for spending in ("obrien-fleming", "pocock"):
        rates = simulate(Design(spending=spending, start=3, max=10), effect=0.0,
                         studies=2000, seed=101)
        seq = rates["sequential"]
        assert seq.any_rate <= 0.05 + 3 * seq.any_se, (spending, seq)
        assert seq.any_rate > 0.02                          # not a rule that never rejects


def test_one_sd_effect_power_and_seeds_against_fixed_designs():
    rates = simulate(Design(start=2, max=6), effect=1.0, studies=2000, seed=202)
    seq, fixed_start, fixed_max = rates["sequential"], rates["fixed-2"], rates["fixed-6"]
    assert seq.power >= fixed_max.power - 0.05
    assert seq.power > fixed_start.power + 0.1
    assert seq.mean_seeds < fixed_max.mean_seeds


@pytest.mark.xfail(strict=True, reason="measured: with batch 1 (8 looks) the valid rule's "
                   "power at a 1-SD effect is about 7 points under fixed 10 seeds' "
                   "(benchmarks/RESULTS.md); fixed 10 wins on power, the rule on seeds")
def test_one_sd_effect_power_obrien_fleming_start_3_max_10_within_five_points():
    rates = simulate(Design(start=3, max=10), effect=1.0, studies=2000, seed=303)
    assert rates["sequential"].power >= rates["fixed-10"].power - 0.05


def test_power_family_rho_8_keeps_power_within_five_points_at_start_3_max_10():
    """The spending that keeps nearly all alpha for the last look meets the target (about 3
    points under fixed 10 seeds) at fewer mean seeds, and still decides large effects early."""
    design = Design(spending="power:8", start=3, max=10)
    rates = simulate(design, effect=1.0, studies=2000, seed=303)
    assert rates["sequential"].power >= rates["fixed-10"].power - 0.05
    assert rates["sequential"].mean_seeds < 10
    rng = np.random.default_rng(23)
    diffs = {f"backbone{i}": list(rng.normal(0.23, 0.02, 10)) for i in range(5)}
    assert max(st.n for st in decide(design, diffs).values()) <= 5


def test_unknown_spending_is_refused():
    for bad in ("haybittle", "power:-1", "power:x"):
        with pytest.raises(ValueError, match="spending"):
            Design(spending=bad)


def test_uncalibrated_carry_over_is_anti_conservative():
    """Why `calibrate` is the default: the plain nominal-p carry-over overshoots alpha at n <= 10
    (0.056 at 20,000 studies); on the same draws the calibrated rule rejects less."""
    plain = simulate(Design(calibrate=False), effect=0.0, studies=2000, seed=404)
    cal = simulate(Design(), effect=0.0, studies=2000, seed=404)
    assert plain["sequential"].any_rate > cal["sequential"].any_rate


def test_nominal_p_of_an_infinite_bound_is_zero():
    assert nominal_p(math.inf) == 0.0 and nominal_p(1.959963984540054) == pytest.approx(0.05)
