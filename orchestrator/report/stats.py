"""The report's statistics: pure functions on arrays of per-seed values, on scipy and statsmodels.

Every arm of a study runs the same seeds (common random numbers), so an arm is compared with its
reference seed by seed: the paired differences d_s = arm_s - reference_s. What is computed:

- per arm: n, mean, sample standard deviation and the Student-t confidence interval of the mean
  (`summarize`);
- per comparison (`paired_comparison`): the mean and SD of the differences, the paired t-test
  (`scipy.stats.ttest_rel`, two-sided) with the t interval of the mean difference, Cohen's d_z
  (mean difference / SD of the differences) and the Wilcoxon signed-rank test
  (`scipy.stats.wilcoxon`, two-sided), but only when the number of non-zero differences lets it
  reach the significance level: with n pairs its smallest two-sided p is 2 / 2^n (0.25 at 3
  seeds, 0.0625 at 5), so below 6 pairs it cannot reject at 0.05 and is reported as None with
  that reason instead of a p that can never be small;
- the exact sign-flip permutation test of the mean difference (`sign_flip_p`), which the report
  uses for a question whose differences have zero variance (t undefined);
- across the questions of a study: Holm's step-down correction
  (`statsmodels.stats.multitest.multipletests(method="holm")`, `holm`);
- the verdict: better / worse by the sign of the difference and the metric's mode (`max`: larger
  is better), when the Holm-corrected p is below alpha; otherwise n.s.

Caveats (docs/statistics.md): the t-test assumes normal
differences and at 3 seeds has low power (about 0.32 for a 1-SD effect one-sided at 0.95); a
difference with zero variance makes t undefined, which is reported as such, not as p = 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

__all__ = [
    "ALPHA",
    "PairedComparison",
    "Summary",
    "holm",
    "paired_comparison",
    "sign_flip_p",
    "summarize",
    "verdict",
    "wilcoxon_min_p",
]

ALPHA = 0.05
Verdict = Literal["better", "worse", "n.s."]


@dataclass(frozen=True)
class Summary:
    """Mean over seeds with its t interval; `std`/`ci_*` are NaN with fewer than 2 values."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class PairedComparison:
    """Arm minus reference over paired seeds (raw metric units: for a `min` metric a negative
    difference is the better one). `t`, `p_value`, `ci_*` and `d_z` are None when undefined
    (fewer than 2 pairs, or differences without variance); `note` then says why."""

    n: int
    diff_mean: float
    diff_sd: float | None
    t: float | None
    p_value: float | None          # paired t-test, two-sided
    ci_low: float | None           # t interval of the mean difference at `confidence`
    ci_high: float | None
    d_z: float | None              # Cohen's d_z: diff_mean / diff_sd
    wilcoxon_p: float | None       # two-sided signed-rank p, or None (see `wilcoxon_note`)
    wilcoxon_note: str             # why the Wilcoxon p is None ("" when it is given)
    note: str = ""                 # why the t-test is undefined ("" when it is given)


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of values but got shape {arr.shape}")
    return arr


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """n, mean, sample SD (ddof 1) and the Student-t interval of the mean; NaN values count as
    missing."""
    arr = _finite(values)
    arr = arr[~np.isnan(arr)]
    n = int(arr.size)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(arr.mean())
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(arr.std(ddof=1))
    if std == 0.0:
        return Summary(n, mean, 0.0, mean, mean)
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return Summary(n, mean, std, float(low), float(high))


def wilcoxon_min_p(n: int) -> float:
    """Smallest two-sided p the exact Wilcoxon signed-rank test can give with n non-zero paired
    differences (every difference of one sign), computed by scipy itself: 2 / 2^n."""
    if n < 1:
        return 1.0
    return float(stats.wilcoxon(np.arange(1.0, n + 1.0), method="exact").pvalue)


def _wilcoxon(diffs: np.ndarray, alpha: float) -> tuple[float | None, str]:
    nonzero = int(np.count_nonzero(diffs))
    floor = wilcoxon_min_p(nonzero)
    if floor >= alpha:
        zeros = diffs.size - nonzero
        pairs = f"{nonzero} non-zero paired differences" + (
            f" ({zeros} zero differences dropped)" if zeros else "")
        return None, (f"not reported: with {pairs} the smallest two-sided Wilcoxon p is "
                      f"{floor:.3g} >= {alpha:g}, so it can never be significant")
    return float(stats.wilcoxon(diffs).pvalue), ""


def paired_comparison(arm: Sequence[float], reference: Sequence[float], *,
                      confidence: float = 0.95, alpha: float = ALPHA) -> PairedComparison:
    """Paired comparison of `arm` with `reference` (equal length, aligned by seed, no NaN)."""
    a, r = _finite(arm), _finite(reference)
    if a.shape != r.shape:
        raise ValueError(f"paired values need equal lengths but got {a.size} and {r.size}")
    if np.isnan(a).any() or np.isnan(r).any():
        raise ValueError("paired values must not contain NaN; drop the seed from both sides")
    diffs = a - r
    n = int(diffs.size)
    if n == 0:
        return PairedComparison(0, math.nan, None, None, None, None, None, None, None,
                                "not reported: no paired seeds", "no paired seeds")
    mean = float(diffs.mean())
    if n < 2:
        return PairedComparison(1, mean, None, None, None, None, None, None, None,
                                "not reported: one paired seed",
                                "one paired seed: no variance, no test")
    sd = float(diffs.std(ddof=1))
    w_p, w_note = _wilcoxon(diffs, alpha)
    # Differences equal to the last bits (the same accuracy grid on every seed) make t infinite
    # or NaN in scipy; say so instead of printing p = 0.
    if sd <= 1e-12 * max(1.0, abs(mean)):
        return PairedComparison(n, mean, 0.0, None, None, None, None, None, w_p, w_note,
                                "the paired differences have zero variance: t is undefined")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(a, r)
    ci = res.confidence_interval(confidence)
    return PairedComparison(n, mean, sd, float(res.statistic), float(res.pvalue),
                            float(ci.low), float(ci.high), mean / sd, w_p, w_note)


def holm(p_values: Sequence[float | None], alpha: float = ALPHA) -> list[float | None]:
    """Holm-adjusted p-values (statsmodels `multipletests(method="holm")`) over the given ones;
    None or NaN entries are not tests and stay None."""
    tested = [(i, p) for i, p in enumerate(p_values) if p is not None and not math.isnan(p)]
    out: list[float | None] = [None] * len(p_values)
    if not tested:
        return out
    _, adjusted, _, _ = multipletests([float(p) for _, p in tested], alpha=alpha,
                                      method="holm")
    for (i, _), p in zip(tested, adjusted, strict=True):
        out[i] = float(p)
    return out


def verdict(diff_mean: float, p_holm: float | None, mode: str, alpha: float = ALPHA) -> Verdict:
    """better / worse when the corrected p is below alpha (direction from `mode`), else n.s."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min' but got {mode!r}")
    if p_holm is None or math.isnan(p_holm) or p_holm >= alpha or diff_mean == 0:
        return "n.s."
    gain = diff_mean if mode == "max" else -diff_mean
    return "better" if gain > 0 else "worse"


SIGN_FLIP_MAX_N = 16


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided p of the paired sign-flip permutation test of the mean difference: under
    "no difference" each paired difference is as likely to have either sign, so p is the share
    of the 2^n sign patterns whose |sum| is at least the observed |sum| (the observed pattern
    included). It needs no variance: n differences identical and non-zero give 2 / 2^n (0.25 at 3
    seeds, 0.03125 at 6), all zero give 1. Every pattern is enumerated for n <= 16; beyond, only
    differences of one magnitude (the zero-variance case, where it is the exact sign test) are
    answered, from the binomial law; other inputs raise ValueError."""
    from scipy import stats

    d = _finite(diffs)
    if np.isnan(d).any():
        raise ValueError("paired differences must not contain NaN")
    n = int(d.size)
    if n == 0:
        return 1.0
    observed = abs(float(d.sum()))
    tol = 1e-9 * max(1.0, float(np.abs(d).sum()))
    if n <= SIGN_FLIP_MAX_N:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        sums = np.abs((1 - 2 * bits) @ d)
        return float(np.count_nonzero(sums >= observed - tol)) / 2**n
    size = float(np.abs(d).max())
    if float(np.abs(d).min()) < size - tol:
        raise ValueError(f"the exact sign-flip test enumerates 2^n sign patterns up to n = "
                         f"{SIGN_FLIP_MAX_N}; {n} differences of unequal size are too many")
    if size <= tol:
        return 1.0
    # One magnitude: |sum| = size |2k - n| for k positive signs; count k with |2k - n| >= obs.
    k_obs = round(observed / size)             # |2k - n| of the observed pattern
    high = (n + k_obs) / 2                     # patterns with 2k - n >= k_obs, and mirrored
    return float(min(1.0, 2.0 * stats.binom.sf(math.ceil(high) - 1, n, 0.5))) if k_obs else 1.0
