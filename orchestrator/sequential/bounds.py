"""Two-sided group-sequential boundaries from Lan-DeMets alpha spending (numpy/scipy only).

The canonical joint distribution (Jennison & Turnbull 2000, section 3.1): z-statistics Z_1..Z_K at
information levels I_1 < ... < I_K (here the number of paired seeds) with Z_k ~ N(0, 1) under the
null and Cov(Z_j, Z_k) = sqrt(I_j / I_k) for j <= k; equivalently the score S_k = Z_k sqrt(I_k) has
independent N(0, I_k - I_{k-1}) increments. A spending function f(t), t = I_k / I_max, gives the
type I error spent by look k: the boundary c_k solves

    P(|Z_1| < c_1, ..., |Z_{k-1}| < c_{k-1}, |Z_k| >= c_k) = f(t_k) - f(t_{k-1}).

That probability comes from the recursive numerical integration of Jennison & Turnbull (2000),
chapter 19 (after Armitage, McPherson & Rowe 1969): the sub-density of Z_{k-1} on its continuation
interval (-c_{k-1}, c_{k-1}), on a Simpson grid, carried to look k by the normal transition kernel.

Spending functions (Lan & DeMets 1983; Jennison & Turnbull 2000, chapter 7), two-sided level a,
as a symmetric pair of one-sided tests that each spend a/2 (the convention of the Lan-DeMets
program of Reboussin et al. and of gsDesign, whose published two-sided 0.05 boundaries for five
equal looks, 4.877 3.357 2.680 2.290 2.031, this reproduces); the total spent by fraction t is
- "obrien-fleming": f(t) = 2 [2 - 2 Phi(z_{1-a/4} / sqrt(t))] (O'Brien & Fleming 1979-like);
- "pocock":         f(t) = a log(1 + (e - 1) t)               (Pocock 1977-like);
- "power:<rho>":    f(t) = a t^rho (Kim & DeMets 1987's power family; rho 8 keeps nearly all of a
                    for the last look, for power at n <= 10).
Both reach f(1) = a, so a schedule whose last look is at I_max spends all of a. (Lan & DeMets'
single two-sided form 2 - 2 Phi(z_{1-a/2} / sqrt(t)) spends more early: first bound 4.38, not 4.88.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

__all__ = ["SPENDINGS", "Spending", "nominal_p", "spent", "z_bounds"]

# "obrien-fleming", "pocock", or "power:<rho>" (rho > 0).
Spending = str
SPENDINGS: tuple[str, ...] = ("obrien-fleming", "pocock", "power:<rho>")

# Past this |z| the remaining null mass (2 Phi(-10) ~ 1.5e-23) is below any level we solve for.
_Z_CAP = 10.0
# A boundary that spends nothing (an increment below this) is +inf: the look cannot reject.
_NO_SPEND = 1e-15


def spent(alpha: float, spending: Spending, t: float) -> float:
    """Type I error spent by information fraction t (clipped to [0, 1]) at two-sided level alpha."""
    t = min(max(t, 0.0), 1.0)
    if t == 0.0:
        return 0.0
    if spending == "obrien-fleming":
        z = stats.norm.isf(alpha / 4.0)
        return float(min(alpha, 4.0 * stats.norm.sf(z / math.sqrt(t))))
    if spending == "pocock":
        return float(min(alpha, alpha * math.log1p((math.e - 1.0) * t)))
    if spending.startswith("power:"):
        try:
            rho = float(spending.removeprefix("power:"))
        except ValueError:
            rho = math.nan
        if rho > 0:
            return float(alpha * t**rho)
    raise ValueError(f"spending must be one of {SPENDINGS} but got {spending!r}")


def _simpson(c: float, h_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid points and Simpson weights on [-c, c] (c capped at _Z_CAP), spacing at most h_max."""
    half = min(c, _Z_CAP)
    intervals = max(2, 2 * math.ceil(half / h_max))      # even number of intervals
    z = np.linspace(-half, half, intervals + 1)
    h = z[1] - z[0]
    w = np.ones_like(z)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return z, w * h / 3.0


def _exit_prob(c: float, z_prev: np.ndarray, dens: np.ndarray, r_prev: float, r_now: float,
               sd: float) -> float:
    """P(continued to look k-1, |Z_k| >= c): dens is the sub-density times Simpson weights."""
    mean = z_prev * r_prev                       # E[S_k | Z_{k-1}] = Z_{k-1} sqrt(I_{k-1})
    up = stats.norm.sf((c * r_now - mean) / sd)
    down = stats.norm.cdf((-c * r_now - mean) / sd)
    return float(np.dot(dens, up + down))


def _solve(target: float, exit_prob: Callable[[float], float]) -> float:
    """The c with exit_prob(c) = target (exit_prob decreasing in c); +inf for no spending."""
    if target <= _NO_SPEND:
        return math.inf
    hi = 1.0
    while exit_prob(hi) > target:
        hi *= 2.0
        if hi > 1e3:
            return math.inf
    if exit_prob(0.0) <= target:
        return 0.0
    return float(optimize.brentq(lambda c: exit_prob(c) - target, 0.0, hi, xtol=1e-10))


@lru_cache(maxsize=4096)
def z_bounds(alpha: float, spending: Spending, looks: tuple[int, ...],
             max_n: int) -> tuple[float, ...]:
    """Two-sided z boundaries c_1..c_K for looks at `looks` paired seeds (strictly increasing,
    each in 1..max_n), information fraction n / max_n. A pure function of its arguments, cached.
    A look that spends (numerically) nothing gets +inf."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1) but got {alpha}")
    if not looks or any(b <= a for a, b in zip(looks, looks[1:], strict=False)) \
            or looks[0] < 1 or looks[-1] > max_n:
        raise ValueError(f"looks must increase strictly within 1..{max_n} but got {looks}")
    def spacing(k: int) -> float:
        """Grid spacing for Z_k: fine against the width of the kernel that carries it on."""
        if k + 1 >= len(looks):
            return 0.02
        return min(0.02, math.sqrt((looks[k + 1] - looks[k]) / looks[k]) / 10.0)

    bounds: list[float] = []
    previous_spent = 0.0
    z_prev = dens = np.empty(0)
    for k, n in enumerate(looks):
        now = spent(alpha, spending, n / max_n)
        target = now - previous_spent
        previous_spent = now
        if k == 0:
            c = math.inf if target <= _NO_SPEND else float(stats.norm.isf(target / 2.0))
            z_prev, w = _simpson(c, spacing(0))
            dens = stats.norm.pdf(z_prev) * w
            bounds.append(c)
            continue
        r_prev, r_now = math.sqrt(looks[k - 1]), math.sqrt(n)
        sd = math.sqrt(n - looks[k - 1])             # SD of the score increment
        zp, dp = z_prev, dens

        def exit_prob(c: float, zp: np.ndarray = zp, dp: np.ndarray = dp,
                      r_prev: float = r_prev, r_now: float = r_now, sd: float = sd) -> float:
            return _exit_prob(c, zp, dp, r_prev, r_now, sd)

        c = _solve(target, exit_prob)
        bounds.append(c)
        if k + 1 < len(looks):
            # Sub-density of Z_k on (-c, c): the kernel of Z_k given Z_{k-1} times the old one.
            z_new, w = _simpson(c, spacing(k))
            kern = stats.norm.pdf((z_new[:, None] * r_now - z_prev[None, :] * r_prev) / sd)
            dens = (kern @ dens) * (r_now / sd) * w
            z_prev = z_new
    return tuple(bounds)


def nominal_p(z: float) -> float:
    """Two-sided nominal p-value of a z boundary: 2 (1 - Phi(z)); 0 for +inf."""
    return 0.0 if math.isinf(z) else float(2.0 * stats.norm.sf(z))
