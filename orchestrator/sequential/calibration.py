"""Calibrating the t carry-over of z-scale boundaries to the t statistics' own joint law.

With normal paired differences, the paired t statistics T_1..T_K of one question at its looks have
a joint null distribution free of the unknown variance (each T_k is scale-invariant). Carrying a
z-scale spending boundary over through nominal p-values gives each T_k its exact marginal level
but not the exact joint one: at n <= 10 (df 2..9) the repeated t-tests reject more often than the
spending function's total (measured: 0.056 instead of 0.05 for start 3, max 10, O'Brien-Fleming).

The correction here spends the same function on the t statistics themselves: on a fixed-seed
Monte Carlo of null paths (deterministic: the same seed, paths and answer on every call; cached
per (a, spending, looks, max)), each look's nominal p boundary is the quantile of the paths still
running that brings the share of paths crossed so far to f(t_k). Monte-Carlo error of the total:
about 2% of a at a = 0.01 with the default 200,000 paths.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import stats

from orchestrator.sequential.bounds import Spending, nominal_p, spent, z_bounds

__all__ = ["PATHS", "null_look_p", "t_boundary_p"]

PATHS = 200_000
_SEED = 20261206


@lru_cache(maxsize=8)                      # 12.8 MB an entry at 8 looks
def null_look_p(looks: tuple[int, ...], paths: int = PATHS) -> np.ndarray:
    """Two-sided paired t-test p-values at each look of `paths` null paths (N(0, 1) differences),
    shaped (paths, K): a fixed seed, so the same array on every call."""
    rng = np.random.default_rng(_SEED)
    d = rng.standard_normal((paths, looks[-1]))
    out = np.empty((paths, len(looks)))
    for k, n in enumerate(looks):
        x = d[:, :n]
        t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(n))
        out[:, k] = 2.0 * stats.t.sf(np.abs(t), n - 1)
    out.setflags(write=False)
    return out


# Below this many Monte-Carlo crossings a look keeps its carried-over boundary (too few paths
# for a quantile; such a look spends at most 50 / PATHS = 0.00025).
_MIN_CROSSINGS = 50


@lru_cache(maxsize=4096)
def t_boundary_p(level: float, spending: Spending, looks: tuple[int, ...],
                 max_n: int) -> tuple[float, ...]:
    """Nominal p boundaries for the paired t-tests at `looks` that spend `level` as the spending
    function says, under the t statistics' own joint null law: at each look the boundary is the
    quantile of the surviving null paths' p-values that brings the cumulative crossings to
    f(t_k) PATHS. A look with fewer than _MIN_CROSSINGS to spend keeps the carried-over boundary
    (so a zero-variance difference, p = 0, still crosses at start)."""
    p = null_look_p(looks)
    carried = [nominal_p(z) for z in z_bounds(level, spending, looks, max_n)]
    alive = np.ones(p.shape[0], dtype=bool)
    crossed = 0
    out: list[float] = []
    for k, n in enumerate(looks):
        pk = p[alive, k]
        target = min(round(spent(level, spending, n / max_n) * p.shape[0]) - crossed,
                     pk.size - 1)
        # The target-th smallest surviving p: exactly `target` paths lie below it.
        b = float(np.partition(pk, target)[target]) if target >= _MIN_CROSSINGS else carried[k]
        hit = p[:, k] < b
        crossed += int((hit & alive).sum())
        alive &= ~hit
        out.append(b)
    return tuple(out)
