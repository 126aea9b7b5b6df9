"""The report of a sweep whose seeds were added by a rule (spec `seeds: {start, max, ...}`).

When the number of seeds depended on the data, the fixed-seed paired t-test and Holm's correction
no longer hold their level: each question's verdict is the sequential rule's instead
(`report.sequential`, over the study's questions as the family; docs/statistics_sequential.md):

- better / worse: the question's paired t-test crossed its look's boundary (by the metric's mode);
- n.s.: it reached `max` paired seeds without crossing;
- undecided: the sweep ended before `max` (interrupted, or `run.budget` spent: the note says which
  can be told).

An arm stopped by arm-level early stopping has no paired finished seeds: it stays in the family
(it holds its share of alpha) and keeps the verdict it gets today ("stopped at rung k"). So does a
question whose reference has no finished seed. Comparisons outside the questions stay descriptive.
`p_value` stays the paired t-test over all paired seeds (for reference); `p_holm` is blank.
arms.csv gets four columns at its end, only for such a sweep (`SEQUENTIAL_CSV_COLUMNS`).

This module also writes the sentences of the method text and the caveats for such a sweep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from orchestrator.report.sequential import (
    SequentialVerdict,
    report_differences,
    sequential_verdicts,
)
from orchestrator.report.tables import fmt_p
from orchestrator.sequential import Design

__all__ = ["SEQUENTIAL_CSV_COLUMNS", "apply_rule", "rule_caveats", "rule_text", "seed_rule",
           "spent"]

# Appended to arms.csv for a sweep under a seed rule (blank outside the questions):
# seeds_used: paired seeds the verdict rests on (those at the look that decided it, else at the
#   last look reached); decided_at: paired seeds at the look whose statistic crossed (blank if
#   none); boundary_p: that look's nominal two-sided p boundary (at the last look reached when
#   none crossed); seq_p: the paired t-test's two-sided p at that same look.
SEQUENTIAL_CSV_COLUMNS = ("seeds_used", "decided_at", "boundary_p", "seq_p")


def seed_rule(spec: Mapping[str, Any]) -> Design | None:
    """The sequential design of a spec.yaml whose `seeds` is a rule, else None (a list)."""
    rule = spec.get("seeds")
    if not isinstance(rule, Mapping):
        return None
    return Design(alpha=float(rule.get("alpha", 0.05)),
                  spending=str(rule.get("spending", "power:8")), start=int(rule["start"]),
                  max=int(rule["max"]), batch=int(rule.get("batch", 1)))


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def spent(trials: pd.DataFrame, gpu: float) -> tuple[float, float]:
    """(trial-epochs, GPU-hours) the trials have spent: epochs run summed over them (a stopped
    trial counts the epochs it ran), and their wall time x `gpu` GPUs per trial."""
    epochs = float(pd.to_numeric(trials["epochs_run"], errors="coerce").fillna(0).sum())
    wall = trials["wall_time_s"] if "wall_time_s" in trials else pd.Series(dtype=float)
    hours = float(pd.to_numeric(wall, errors="coerce").fillna(0).sum()) / 3600
    return epochs, hours * gpu


def _budget(spec: Mapping[str, Any], trials: pd.DataFrame) -> str | None:
    """`run.budget` in words with what the trials spent, or None when the spec sets none."""
    run = spec.get("run")
    budget = run.get("budget") if isinstance(run, Mapping) else None
    if not isinstance(budget, Mapping):
        return None
    if budget.get("trial_epochs") is not None:
        epochs = int(spent(trials, 0.0)[0])
        return f"run.budget of {int(budget['trial_epochs'])} trial-epochs, {epochs} spent"
    if budget.get("gpu_hours") is not None:
        return f"run.budget of {float(budget['gpu_hours']):g} GPU-hours"
    return None


def _note(v: SequentialVerdict, design: Design, budget: str | None) -> str:
    st = v.state
    at = (f"p {fmt_p(st.p)} against the look's boundary {fmt_p(st.boundary_p)}"
          if math.isfinite(st.p) else "no look reached")
    rest = (f"; the verdict rests on the first {v.seeds_used} of {v.seeds_paired} paired seeds"
            if v.seeds_paired > v.seeds_used else "")
    if v.decided_at is not None:
        later = (f", rejected at the look of {v.seeds_used} once a decided question's level "
                 f"was shared" if v.seeds_used != v.decided_at else "")
        return (f"sequential rule: decided at {v.decided_at} paired seeds ({at}, level "
                f"{st.level:.3g}){later}{rest}")
    if v.verdict == "n.s.":
        return (f"sequential rule: n.s. at {v.seeds_used} paired seeds, the rule's max ({at} "
                f"at the last look){rest}")
    why = (f"{budget}: the budget was spent, or the run was interrupted" if budget else
           "no run.budget: the run was interrupted or is still running (--resume adds the seeds "
           "it still needs)")
    return (f"sequential rule: undecided at {v.seeds_used} of max {design.max} paired seeds "
            f"({at}); the sweep stopped adding seeds before max ({why}){rest}")


def apply_rule(design: Design, rows: Sequence[dict[str, Any]], mode: str, spec: Mapping[str, Any],
               trials: pd.DataFrame) -> None:
    """Give the question rows of `arm_rows` (dicts, with `values`, `question`, `comparison`,
    `verdict`, `notes`) the sequential rule's verdicts and the SEQUENTIAL_CSV_COLUMNS, in place.
    Every question is in the family; only those with a comparison get a new verdict."""
    frame = pd.DataFrame([{k: r[k] for k in ("arm", "baseline", "question", "values")}
                          for r in rows])
    verdicts = sequential_verdicts(design, report_differences(frame), mode) \
        if not frame.empty else {}
    budget = _budget(spec, trials)
    for row in rows:
        row.update({c: None for c in SEQUENTIAL_CSV_COLUMNS}, seeds_max=design.max)
        v = verdicts.get((row["arm"], row["baseline"])) if row["question"] else None
        if v is None:
            continue
        row.update(p_holm=None, seeds_used=v.seeds_used, decided_at=v.decided_at,
                   boundary_p=_finite(v.state.boundary_p), seq_p=_finite(v.state.p))
        if row["comparison"] is not None:
            row["verdict"] = v.verdict
            row["notes"].append(_note(v, design, budget))


def _looks(design: Design) -> str:
    looks = design.looks()
    shown = ", ".join(str(n) for n in looks) if len(looks) <= 4 else \
        f"{looks[0]}, {looks[1]}, ..., {looks[-1]}"
    return shown


def _spending(spending: str) -> str:
    if spending.startswith("power:"):
        return f"{spending} (Kim & DeMets' power family, alpha t^{spending[6:]})"
    return {"obrien-fleming": "obrien-fleming (O'Brien-Fleming-type)",
            "pocock": "pocock (Pocock-type)"}.get(spending, spending)


def rule_text(design: Design, df: pd.DataFrame, questions: Sequence[tuple[str, str]] | None
              ) -> str:
    """The method text's account of the verdicts for a sweep under a seed rule."""
    family = df[df["question"].astype(bool)]
    m = len(family)
    named = "; ".join(f"{a} vs {r}" for a, r in questions) if questions is not None else \
        "every arm against its reference"
    out = (f"The seeds were added by a sequential rule (spec `seeds`: start {design.start}, max "
           f"{design.max}, batch {design.batch}, spending {_spending(design.spending)}, alpha "
           f"{design.alpha:g}): every arm ran seeds 0-{design.start - 1}, then each undecided "
           f"question's arm and reference got the next {design.batch} seed(s) together until "
           f"the rule decided it, reached max {design.max} or the run ended. The rule tests "
           f"each question with the paired t-test at looks of {_looks(design)} paired seeds, "
           f"against Lan-DeMets alpha-spending boundaries calibrated to the t statistics; the "
           f"study's {m} question(s) ({named}) share alpha {design.alpha:g} by Holm-type "
           f"recycling (Maurer & Bretz 2013): each starts at alpha/{m}, and a decided "
           f"question's level is shared among those still open. Verdict: better/worse when a "
           f"look's p falls below its boundary, n.s. when max is reached without that, "
           f"undecided when the sweep ended before max. A verdict rests on the paired seeds in "
           f"arms.csv's `seeds_used` (`decided_at`, `boundary_p` and `seq_p`: the look that "
           f"crossed). Because the number of seeds depended on the data, fixed-seed p-values "
           f"and Holm's correction do not apply: p (t) is the paired t-test over all paired "
           f"seeds, for reference only, and p (Holm) is blank. Method and assumptions: "
           f"docs/statistics_sequential.md.")
    stopped = int((family["state"] == "stopped").sum())
    if stopped:
        out += (f" The {stopped} question arm(s) stopped early (at a rung) have no paired "
                f"finished seeds: they stay in the family, holding their share of alpha, and "
                f"are never decided.")
    zero = family[family["exact_p"].astype(bool)] if "exact_p" in family else family.iloc[:0]
    if not zero.empty:
        out += (f" Where a question's paired differences are identical on every seed "
                f"({', '.join(map(str, zero['arm']))}), p (t) is the exact sign-flip test's; "
                f"the rule counts identical non-zero differences as t = ±inf (p = 0: decided "
                f"at the first look that spends alpha) and all-zero ones as p = 1.")
    return out


def rule_caveats(design: Design) -> str:
    return ("Caveats: the sequential rule assumes normal paired differences, independent across "
            "seeds, and looks fixed before the data (batches never sized from results). A metric "
            "on a grid (accuracy on a small test set) can give identical differences on every "
            "seed by chance, which the rule counts as decided: read such a verdict with the raw "
            f"differences. n.s. (at max {design.max} seeds) is not evidence of no effect; "
            "undecided means the sweep ended before max. An arm stopped early (at a rung) has "
            "no final estimate: it is shown where it stopped and never averaged in with "
            "finished seeds. Failed seeds are left out of the pairing and named in the notes.")
