"""The sequential rule's verdicts for the report: each question's verdict, the paired seeds it used
and the look that decided it, from `orchestrator.sequential.decide`.

Inputs are what the report already has: the trials (trials.parquet's columns `arm`, `seed`,
`status`, `metric_final`) and the study's questions (`Plan.questions`, or
`report.questions.asked`), or the report's own rows (`arm_rows`). A question's data are its
paired differences, arm minus reference, over the seeds both completed with a finite value, in
seed order; stopped and failed seeds are not paired (as in the fixed-seeds report). The family is
the questions given: `decide` shares alpha over exactly them.

`sequential.decide` works in raw units (a positive difference is "better"); for a metric to
minimise the labels are swapped here, so "better" always means better by the metric's mode.
Nothing here runs trials: the driver that adds seeds (`orchestrator.tune.stages`) calls
`sequential_verdicts` after each stage, and the report (`orchestrator.report.seed_rule`) at the
end, so both read the same verdicts from the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from orchestrator.sequential import Design, QuestionState, decide
from orchestrator.spec.questions import Question

__all__ = ["SequentialVerdict", "question_differences", "report_differences",
           "sequential_table", "sequential_verdicts"]

_FLIP = {"better": "worse", "worse": "better"}


@dataclass(frozen=True)
class SequentialVerdict:
    """One question's answer under the sequential rule. `verdict`: better / worse (by the
    metric's mode), undecided (may get more seeds), n.s. (reached `max` seeds without crossing);
    `seeds_used`: paired seeds the decision rests on; `seeds_paired`: paired seeds available;
    `decided_at`: the number of paired seeds at the look whose statistic crossed (None if
    undecided or n.s.); `state`: sequential.decide's full state (p, boundary, level, ...)."""

    arm: str
    reference: str
    verdict: str
    seeds_used: int
    seeds_paired: int
    decided_at: int | None
    needs_more: bool
    state: QuestionState


def _paired(trials: pd.DataFrame, arm: str) -> dict[int, float]:
    rows = trials[(trials["arm"] == arm) & (trials["status"] == "completed")]
    out: dict[int, float] = {}
    for seed, value in zip(rows["seed"], rows["metric_final"], strict=True):
        if value is not None and math.isfinite(float(value)):
            out[int(seed)] = float(value)
    return out


def question_differences(trials: pd.DataFrame, questions: Sequence[Question]
                         ) -> dict[Question, list[float]]:
    """Each question's paired differences (arm minus reference) in seed order, from rows with
    trials.parquet's columns arm, seed, status and metric_final."""
    out: dict[Question, list[float]] = {}
    for arm, ref in questions:
        a, r = _paired(trials, arm), _paired(trials, ref)
        out[(arm, ref)] = [a[s] - r[s] for s in sorted(set(a) & set(r))]
    return out


def report_differences(arms: pd.DataFrame) -> dict[Question, list[float]]:
    """The same from the report's rows (`report.arms.arm_rows`): every row marked `question`,
    over the seeds it and its reference both finished, in seed order."""
    by_arm = {r["arm"]: r for r in arms.to_dict("records")}
    out: dict[Question, list[float]] = {}
    for row in by_arm.values():
        if not row.get("question"):
            continue
        ref = by_arm.get(row["baseline"])
        mine, theirs = dict(row["values"]), dict(ref["values"]) if ref is not None else {}
        out[(row["arm"], row["baseline"])] = [mine[s] - theirs[s]
                                              for s in sorted(set(mine) & set(theirs))]
    return out


def sequential_verdicts(design: Design, differences: Mapping[Question, Sequence[float]],
                        mode: str = "max") -> dict[Question, SequentialVerdict]:
    """The sequential rule's verdict per question; the questions given are the family."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min' but got {mode!r}")
    names = {f"{a} vs {r}": (a, r) for a, r in differences}
    states = decide(design, {name: differences[q] for name, q in names.items()})
    out: dict[Question, SequentialVerdict] = {}
    for name, (arm, ref) in names.items():
        st = states[name]
        verdict = _FLIP.get(st.verdict, st.verdict) if mode == "min" else st.verdict
        out[(arm, ref)] = SequentialVerdict(
            arm=arm, reference=ref, verdict=verdict, seeds_used=st.n,
            seeds_paired=len(differences[(arm, ref)]), decided_at=st.decided_at,
            needs_more=st.needs_more, state=st)
    return out


def sequential_table(design: Design, trials: pd.DataFrame, questions: Sequence[Question],
                     mode: str = "max") -> pd.DataFrame:
    """One row per question (in the order given): arm, reference, verdict, seeds_used,
    seeds_paired, decided_at, needs_more, mean, p, boundary_p, level."""
    verdicts = sequential_verdicts(design, question_differences(trials, questions), mode)
    rows = [dict(arm=v.arm, reference=v.reference, verdict=v.verdict, seeds_used=v.seeds_used,
                 seeds_paired=v.seeds_paired, decided_at=v.decided_at, needs_more=v.needs_more,
                 mean=v.state.mean, p=v.state.p, boundary_p=v.state.boundary_p,
                 level=v.state.level) for v in verdicts.values()]
    return pd.DataFrame(rows, columns=["arm", "reference", "verdict", "seeds_used",
                                       "seeds_paired", "decided_at", "needs_more", "mean", "p",
                                       "boundary_p", "level"])
