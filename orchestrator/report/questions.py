"""The report's side of the study's questions (spec `compare:`, orchestrator/spec/questions.py).

`asked(inputs)`: the questions the recorded spec asks, resolved against the recorded arms (None
when the spec has no `compare`: every comparison is a question, as before). `family_text`,
`descriptive_text` and `exact_text` are the sentences of the method text that name Holm's family,
the comparisons outside it and the exact test used for differences without variance; all are
empty (None / "") for a study without `compare` and without such a difference, so its report
reads as it always did.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from orchestrator.report.inputs import ReportError, SweepInputs
from orchestrator.spec.questions import Question, QuestionError, resolve_questions

__all__ = ["EXACT_NOTE", "asked", "descriptive_text", "exact_text", "family_text"]

# The note an arm's row gets when its p comes from the exact test (the arms table shows it).
EXACT_NOTE = ("the paired differences have zero variance (t undefined): p is the exact two-sided "
              "sign-flip permutation test over all 2^{n} sign patterns")


def asked(inputs: SweepInputs) -> tuple[Question, ...] | None:
    """The recorded spec's questions, or None without `compare` (every comparison asks)."""
    compare: Any = inputs.spec.get("compare")
    if compare is None:
        return None
    arms = {a.name: a.aliases for a in inputs.arms}
    refs = {a.name: a.reference for a in inputs.arms if a.reference}
    try:
        return resolve_questions(compare, arms, refs)
    except QuestionError as exc:
        raise ReportError(f"{inputs.directory / 'spec.yaml'}: {exc}; the sweep checked its "
                          f"questions when it started, so this spec.yaml was edited: restore "
                          f"it") from None


def family_text(inputs: SweepInputs, df: pd.DataFrame) -> str | None:
    """`Holm's correction over the study's m question(s) (...)` for a spec with `compare`, else
    None (the report then names the comparisons with a p, as it always did)."""
    questions = asked(inputs)
    if questions is None:
        return None
    m = len(questions)
    listed = "; ".join(f"{a} vs {r}" for a, r in questions)
    with_p = int((df["question"] & df["p_value"].notna()).sum())
    untested = f", {with_p} of them with a p" if with_p < m else ""
    return (f"Holm's correction over the study's {m} question(s) (spec `compare`: "
            f"{listed}{untested})")


def descriptive_text(df: pd.DataFrame, family: str = "Holm's family") -> str:
    """The method sentence for the comparisons that are not questions ("" when there are none);
    `family` names the set they are not in (a seed rule's sweep: "the rule's family")."""
    others = int((~df["question"] & (df["verdict"] == "descriptive")).sum())
    if not others:
        return ""
    return (f" The other {others} comparison(s) of an arm with its reference are not questions "
            f"of the study: they are descriptive (difference and 95% interval; no p, not in "
            f"{family}, verdict 'descriptive').")


def exact_text(df: pd.DataFrame) -> str:
    """The method sentence for the exact sign-flip test, when some question needed it."""
    used = df[df["exact_p"]] if "exact_p" in df.columns else df.iloc[:0]
    if used.empty:
        return ""
    arms = ", ".join(str(a) for a in used["arm"])
    return (f" Where a question's paired differences have zero variance ({arms}) the t-test is "
            f"undefined; its p is then the exact two-sided sign-flip permutation test of the "
            f"mean difference over all 2^n sign patterns (2/2^n when every seed moves the same "
            f"way: 0.25 at 3 seeds, 0.031 at 6).")
