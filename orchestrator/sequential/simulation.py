"""Simulated paired studies for orchestrator.sequential: the family-wise error rate under the null,
and power and seeds used under an effect, against fixed-seed designs with Holm over the questions.

Shared by tests/test_sequential.py (a small version, in the suite) and
benchmarks/sequential_sim.py (the table in benchmarks/RESULTS.md). Each study has `questions`
independent questions whose paired differences are N(effect, 1) (effect in SDs of the difference),
one per seed, drawn up to `max` seeds; the sequential rule sees them look by look (decide_arrays
only uses what a look has reached, and a question rejected at a look gets no more seeds), the
fixed designs see the first `start` or all `max` of the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.sequential.rule import Design, decide_arrays, look_statistics

__all__ = ["Rates", "holm_reject", "simulate"]


@dataclass(frozen=True)
class Rates:
    """any_rate: share of studies with at least one better/worse verdict (the family-wise error
    rate when effect = 0) and its Monte-Carlo standard error; power: share of questions decided in
    the direction of the effect (0 when effect = 0); mean_seeds: paired seeds per question."""

    any_rate: float
    any_se: float
    power: float
    mean_seeds: float


def holm_reject(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down over the last axis of p (one family per row): the rejected ones."""
    m = p.shape[-1]
    order = np.argsort(p, axis=-1)
    sorted_p = np.take_along_axis(p, order, axis=-1)
    ok = sorted_p <= alpha / (m - np.arange(m))
    step = np.cumprod(ok, axis=-1).astype(bool)
    out = np.zeros_like(step)
    np.put_along_axis(out, order, step, axis=-1)
    return out


def _rates(reject: np.ndarray, right: np.ndarray, seeds: np.ndarray) -> Rates:
    any_ = reject.any(axis=1)
    rate = float(any_.mean())
    se = float(np.sqrt(max(rate * (1.0 - rate), 1e-12) / any_.size))
    return Rates(rate, se, float((reject & right).mean()), float(seeds.mean()))


def simulate(design: Design, *, effect: float, studies: int, questions: int = 5,
             seed: int = 0) -> dict[str, Rates]:
    """Rates of the sequential design and of fixed `start` and fixed `max` seeds with Holm, on
    the same simulated differences. Keys: "sequential", "fixed-<start>", "fixed-<max>"."""
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((studies, questions, design.max)) + effect
    _, t, p = look_statistics(design, d)
    dec = decide_arrays(design, p)
    sched = np.array(design.looks())
    rejected = dec.stage >= 0
    crossed_t = np.take_along_axis(t, np.maximum(dec.crossed, 0)[..., None], axis=-1)[..., 0]
    seq_seeds = np.where(rejected, sched[np.maximum(dec.stage, 0)], design.max)
    want = np.sign(effect)
    out = {"sequential": _rates(rejected, np.sign(crossed_t) == want, seq_seeds)}
    for label, k in ((f"fixed-{design.start}", 0), (f"fixed-{design.max}", len(sched) - 1)):
        rej = holm_reject(p[..., k], design.alpha)
        out[label] = _rates(rej, np.sign(t[..., k]) == want,
                            np.full(rej.shape, sched[k]))
    return out
