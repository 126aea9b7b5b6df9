"""The study's questions: which arm-against-reference comparisons form its multiple-testing family.

A designed study measures every arm against its reference (the baseline, or the arm `references`
names). Not every such comparison is a question the study asks: in the backbone study, PVT-micro
against ViT-micro is context, LocalViT-PVT against PVT is the question. The spec's `compare:` key
says which are questions:

- absent, or the rule `references`: every arm against its reference (the default; every
  comparison is a question, as before `compare` existed);
- the rule `leaves`: every arm that is no other arm's reference, against its own reference (the
  rows of the report's backbone table: each LocalViT variant against its own backbone);
- a list of `{arm: reference}` pairs, arm names (or aliases) as the plan names them
  (`python -m orchestrator.sweep SPEC --dry-run` lists them). A question compares an arm with its
  own reference, so `reference` must be the arm's reference in the plan.

Only the questions share the error rate (Holm's correction in the report, the group-sequential
rule of orchestrator.sequential); the other comparisons are reported descriptively (difference and
interval, no p-value, no verdict). `check_compare` checks the key's shape (spec/model.py),
`resolve_questions` resolves it against the plan's arms; both raise `QuestionError`, a ValueError
whose message starts with the key path, for the caller to prefix with the file.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["RULES", "Question", "QuestionError", "check_compare", "resolve_questions"]

# rule -> what it asks (shown in errors and docs)
RULES: Mapping[str, str] = {
    "references": "every arm against its reference (the default)",
    "leaves": "every arm that is no other arm's reference, against its own reference",
}
Question = tuple[str, str]           # (arm, reference), canonical arm names


class QuestionError(ValueError):
    """`compare:` is malformed or names arms the plan does not have."""


_FIX_SHAPE = ("write a rule (" + ", ".join(RULES) + ") or a list of pairs, one an item: "
              "`- localvit_pvt_micro: pvt_micro`")


def _label(value: Any) -> str:
    return repr(value) if not isinstance(value, Mapping) else \
        "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"


def check_compare(value: Any) -> Any:
    """`value` unchanged if it is None, a known rule, or a list of one-pair {arm: reference}
    mappings of strings; QuestionError saying what is wrong otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in RULES:
            near = difflib.get_close_matches(value, list(RULES), n=1, cutoff=0.5)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise QuestionError(f"unknown rule {value!r}; {hint}{_FIX_SHAPE}")
        return value
    if not isinstance(value, list) or not value:
        what = "an empty list" if isinstance(value, list) else type(value).__name__
        raise QuestionError(f"got {what}; {_FIX_SHAPE} (leave the key out to ask every arm "
                            f"against its reference)")
    for i, item in enumerate(value):
        if not isinstance(item, Mapping) or len(item) != 1 or not all(
                isinstance(x, str) for pair in item.items() for x in pair):
            raise QuestionError(f"item {i + 1} ({_label(item)}) is not one `arm: reference` "
                                f"pair of arm names; {_FIX_SHAPE}")
    return value


def resolve_questions(compare: Any, arms: Mapping[str, Sequence[str]],
                      references: Mapping[str, str]) -> tuple[Question, ...]:
    """The questions `compare` asks, as (arm, reference) pairs of canonical arm names.

    `arms`: every arm name of the plan (plan order) -> its aliases; `references`: every arm but
    the baseline -> its reference arm. A rule gives the questions in plan order, a list in its
    own order. QuestionError (message starting `compare...:`) if a name is not an arm, a pair
    is not the arm and its own reference, or a question is asked twice."""
    check_compare(compare)
    if compare is None or compare == "references":
        return tuple((a, references[a]) for a in arms if a in references)
    if compare == "leaves":
        refs = set(references.values())
        return tuple((a, references[a]) for a in arms if a in references and a not in refs)
    canonical = {name: name for name in arms}
    canonical.update({alias: name for name, aliases in arms.items() for alias in aliases})

    def resolve(name: str, where: str) -> str:
        if name in canonical:
            return canonical[name]
        near = difflib.get_close_matches(name, list(canonical), n=1, cutoff=0.5)
        hint = f"did you mean '{near[0]}'?" if near else f"the arms are: {', '.join(arms)}"
        raise QuestionError(f"{where}: no arm named '{name}'; {hint} (python -m "
                            f"orchestrator.sweep SPEC --dry-run lists the arms)")

    out: list[Question] = []
    given: set[tuple[str, str]] = set()
    for item in compare:
        ((arm_given, ref_given),) = item.items()
        where = f"compare.{arm_given}"
        arm, ref = resolve(arm_given, where), resolve(ref_given, where)
        own = references.get(arm)
        if own is None:
            raise QuestionError(f"{where}: '{arm_given}' is the study's baseline and is measured "
                                f"against no arm; ask about another arm against it instead")
        if ref != own:
            raise QuestionError(f"{where}: '{arm_given}' is measured against '{own}' (its "
                                f"reference), not '{ref_given}'; a question compares an arm with "
                                f"its own reference: write `{arm_given}: {own}`, or make "
                                f"'{ref_given}' its reference with `references: "
                                f"{{{arm_given}: {ref_given}}}`")
        if (arm_given, ref_given) in given:
            raise QuestionError(f"{where}: the question '{arm} against {ref}' is asked twice; "
                                f"remove one")
        given.add((arm_given, ref_given))
        # Two questions written for arms that the plan merged (one model once shrunk by
        # --smoke, say) are one question of the merged arm.
        if (arm, ref) not in out:
            out.append((arm, ref))
    return tuple(out)
