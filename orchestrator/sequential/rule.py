"""Paired seeds added until each of a study's questions is decided: a group-sequential rule that
stays valid under optional stopping, with family-wise error control over the questions.

A question is the sequence of paired differences d_1, d_2, ... (arm minus reference, one per
seed, seeds added in order). Looks happen at n = start, start + batch, ..., max paired seeds (the
schedule is fixed by the Design, never by the data). At each look the paired t statistic of
d_1..d_n (df n - 1) gives a two-sided p; the question crosses when that p is below the nominal
two-sided level of its Lan-DeMets boundary at that look (orchestrator.sequential.bounds), the usual
carry-over of a z-scale boundary to an unknown variance (the "significance level approach" of
Jennison & Turnbull 2000 for normal data with unknown variance; approximate at small df).

Differences identical on every seed: non-zero ones give t = +-inf and p = 0 (they cross at any
look whose boundary spends something: evidence, not "n/a"); all-zero ones give t = 0, p = 1. The
tolerance is that of orchestrator.report.stats (SD <= 1e-12 max(1, |mean|)).

Family: the m questions share alpha by the Holm-type graphical procedure for group-sequential
tests of Maurer & Bretz (2013): each starts at level alpha / m; when one is rejected its level is
split equally among those still open, so after r rejections each open question tests at
alpha / (m - r), with boundaries recomputed at that level over all its looks so far (a look
already taken may now cross). Verdicts: "better" / "worse" (sign of the statistic at the look that
crossed; raw units, larger difference = "better"), "undecided" (may still get seeds), "n.s."
(reached max without crossing).

Everything is a pure function of the data seen so far, so a driver killed and restarted derives
the same decisions. docs/statistics_sequential.md has the method, its assumptions and references.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
from scipy import stats

from orchestrator.sequential.bounds import Spending, nominal_p, spent, z_bounds
from orchestrator.sequential.calibration import t_boundary_p

__all__ = [
    "BatchDecision",
    "Design",
    "QuestionState",
    "SeqVerdict",
    "boundary_p",
    "decide",
    "decide_arrays",
    "look_statistics",
    "seeds_wanted",
]

SeqVerdict = Literal["better", "worse", "undecided", "n.s."]
K = TypeVar("K")


@dataclass(frozen=True)
class Design:
    """alpha: family-wise two-sided level; spending: "obrien-fleming", "pocock" or
    "power:<rho>" (orchestrator.sequential.bounds); looks at
    start, start + batch, ..., max paired seeds (max always a look). calibrate: spend alpha on
    the t statistics' own joint null law (orchestrator.sequential.calibration); False: the plain
    carry-over of the z boundaries' nominal p (about 12% over alpha at n <= 10)."""

    alpha: float = 0.05
    spending: Spending = "obrien-fleming"
    start: int = 3
    max: int = 10
    batch: int = 1
    calibrate: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1) but got {self.alpha}")
        spent(self.alpha, self.spending, 0.5)              # raises on an unknown spending
        if self.start < 2:
            raise ValueError(f"start must be at least 2 (a t statistic needs 2 seeds), "
                             f"got {self.start}")
        if self.max < self.start:
            raise ValueError(f"max ({self.max}) must be at least start ({self.start})")
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1 but got {self.batch}")

    def looks(self) -> tuple[int, ...]:
        """The look schedule: numbers of paired seeds at which the statistics are examined."""
        return (*range(self.start, self.max, self.batch), self.max)


def boundary_p(design: Design, level: float, looks: int | None = None) -> tuple[float, ...]:
    """Nominal two-sided p boundaries at two-sided level `level` for the design's first `looks`
    looks (all of them by default), calibrated if the design says so. Cached."""
    sched = design.looks()
    if design.calibrate:
        return t_boundary_p(level, design.spending, sched, design.max)[:looks]
    zs = z_bounds(level, design.spending, sched, design.max)
    return tuple(nominal_p(z) for z in zs[:looks])


def _zero_sd(sd: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return np.asarray(sd <= 1e-12 * np.maximum(1.0, np.abs(mean)))


def look_statistics(design: Design, diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """Mean, t and two-sided p of the paired t-test at each look, for diffs shaped (..., N)
    (NaN after a question's last seed). Each output is shaped (..., L); NaN where a look is not
    reached."""
    d = np.asarray(diffs, dtype=float)
    sched = design.looks()
    shape = (*d.shape[:-1], len(sched))
    mean_out, t_out, p_out = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for k, n in enumerate(sched):
            if n > d.shape[-1]:
                break
            x = d[..., :n]
            reached = ~np.isnan(x).any(axis=-1)
            mean = x.mean(axis=-1)
            sd = x.std(axis=-1, ddof=1)
            zero = _zero_sd(sd, mean)
            t = mean / (sd / math.sqrt(n))
            all_zero = zero & (np.abs(mean) <= 1e-12)
            t = np.where(zero, np.sign(mean) * np.inf, t)
            t = np.where(all_zero, 0.0, t)
            p = 2.0 * stats.t.sf(np.abs(t), n - 1)
            mean_out[..., k] = np.where(reached, mean, np.nan)
            t_out[..., k] = np.where(reached, t, np.nan)
            p_out[..., k] = np.where(reached, p, np.nan)
    return mean_out, t_out, p_out


@dataclass(frozen=True)
class BatchDecision:
    """decide_arrays' answer, shaped (S, Q): `stage` is the index of the look (in
    design.looks()) at which a question was rejected, -1 if not; `crossed` the index of the look
    whose statistic crossed (-1 if none); `level` the two-sided level a rejected question was
    rejected at, or an open one's level after the last stage."""

    stage: np.ndarray
    crossed: np.ndarray
    level: np.ndarray


def _levels(design: Design, m: int) -> np.ndarray:
    """Row r: nominal p boundaries at level alpha / (m - r) over all looks, r = 0..m-1."""
    return np.array([boundary_p(design, design.alpha / (m - r)) for r in range(m)])


def decide_arrays(design: Design, p: np.ndarray) -> BatchDecision:
    """The graphical (Holm-type) group-sequential procedure on look p-values p shaped
    (S, Q, L) (NaN where a look is not reached), vectorised over S independent studies."""
    p = np.asarray(p, dtype=float)
    s_count, m, n_looks = p.shape
    bp = _levels(design, m)
    stage = np.full((s_count, m), -1)
    crossed = np.full((s_count, m), -1)
    level = np.full((s_count, m), np.nan)
    rejected = np.zeros(s_count, dtype=int)
    for j in range(n_looks):
        while True:
            r = np.minimum(rejected, m - 1)
            thr = bp[r, : j + 1]                                  # (S, j+1)
            hits = p[:, :, : j + 1] < thr[:, None, :]             # NaN compares False
            new = hits.any(axis=-1) & (stage < 0)
            if not new.any():
                break
            stage[new] = j
            crossed[new] = hits.argmax(axis=-1)[new]
            level = np.where(new, (design.alpha / (m - r))[:, None], level)
            rejected = rejected + new.sum(axis=1)
    open_level = design.alpha / np.maximum(m - rejected, 1)
    level = np.where(stage < 0, open_level[:, None], level)
    return BatchDecision(stage, crossed, level)


@dataclass(frozen=True)
class QuestionState:
    """One question's state. n: paired seeds used (at a rejection, those at the look where it
    was rejected; otherwise the last look reached; the available seeds when no look is reached
    yet). mean, t, p, boundary_p: at `decided_at` for a rejected question (the look whose
    statistic crossed, maybe earlier than n), else at the last look reached (NaN before start).
    level: the question's two-sided level after recycling."""

    verdict: SeqVerdict
    n: int
    mean: float
    t: float
    p: float
    boundary_p: float
    level: float
    decided_at: int | None
    needs_more: bool


def _as_matrix(design: Design, differences: Mapping[str, Sequence[float]]) -> np.ndarray:
    width = design.max
    out = np.full((1, len(differences), width), np.nan)
    for i, (name, seq) in enumerate(differences.items()):
        arr = np.asarray(seq, dtype=float)
        if arr.ndim != 1:
            raise ValueError(f"question {name!r}: expected a 1-D sequence, got shape {arr.shape}")
        if np.isnan(arr).any():
            raise ValueError(f"question {name!r}: differences must not contain NaN")
        arr = arr[:width]
        out[0, i, : arr.size] = arr
    return out


def decide(design: Design, differences: Mapping[str, Sequence[float]]) -> dict[str, QuestionState]:
    """Each question's state from its paired differences so far (seed order). The questions
    given are the family (its size m sets the starting level alpha / m). Seeds past `max`, and
    past the last look a question has reached, are not used."""
    if not differences:
        return {}
    sched = design.looks()
    d = _as_matrix(design, differences)
    mean, t, p = look_statistics(design, d)
    dec = decide_arrays(design, p)
    out: dict[str, QuestionState] = {}
    for i, (name, seq) in enumerate(differences.items()):
        reached = int(np.sum(~np.isnan(p[0, i])))           # looks reached (a prefix)
        level = float(dec.level[0, i])
        bp = boundary_p(design, level) if reached else ()
        j, c = int(dec.stage[0, i]), int(dec.crossed[0, i])
        if j >= 0:
            k, n = c, sched[min(j, reached - 1)]
            verdict: SeqVerdict = "better" if t[0, i, c] > 0 else "worse"
        elif reached:
            k, n = reached - 1, sched[reached - 1]
            verdict = "n.s." if n >= design.max else "undecided"
        else:
            k, n, verdict = -1, min(len(seq), design.max), "undecided"
        out[name] = QuestionState(
            verdict=verdict, n=n,
            mean=float(mean[0, i, k]) if k >= 0 else math.nan,
            t=float(t[0, i, k]) if k >= 0 else math.nan,
            p=float(p[0, i, k]) if k >= 0 else math.nan,
            boundary_p=bp[k] if k >= 0 else math.nan,
            level=level,
            decided_at=sched[c] if j >= 0 else None,
            needs_more=verdict == "undecided" and n < design.max)
    return out


def seeds_wanted(design: Design, states: Mapping[K, QuestionState]) -> dict[K, int]:
    """How many paired seeds each question should have once the next batch is done: the next
    look of a question that needs more, its current n otherwise (nothing to add). Keyed as
    `states` is (question names, or the report's (arm, reference) pairs)."""
    sched = design.looks()
    wanted: dict[K, int] = {}
    for name, st in states.items():
        if not st.needs_more:
            wanted[name] = st.n
            continue
        later = [n for n in sched if n > st.n]
        wanted[name] = sched[0] if st.n < sched[0] else (later[0] if later else design.max)
    return wanted
