"""One row per arm: its seeds, its estimate, and its paired comparison with its reference.

The value of a seed is the trial's final value of the spec's metric (`metric_final`, the last
epoch), from completed trials only:

- a seed stopped early (arm-level halving or per-trial ASHA) was measured at an earlier epoch and
  is never averaged in with finished seeds; an arm with no finished seed but stopped ones is
  "stopped at rung k (epoch e)" and has no final estimate, no p and no verdict;
- a failed seed (or a completed one whose metric is NaN) is excluded from the arm's estimate and
  from the pairing, and flagged in `notes`;
- an arm is compared with its reference (the baseline unless the spec says otherwise) over the
  seeds both finished; Holm's correction runs over the study's questions (spec `compare`, by
  default every comparison) that have a p; a comparison that is not a question is descriptive
  (difference and interval, no p, verdict "descriptive");
- a question whose paired differences have zero variance (t undefined) gets the exact sign-flip
  permutation test's p (`stats.sign_flip_p`) instead of "n/a";
- a sweep whose seeds were added by a rule (spec `seeds: {start, max, ...}`) gets the sequential
  rule's verdicts for its questions instead of Holm's, and four more arms.csv columns
  (`seed_rule.py`).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

import pandas as pd

from orchestrator.plan.record import ArmRecord
from orchestrator.report import stats
from orchestrator.report.inputs import SweepInputs
from orchestrator.report.questions import asked
from orchestrator.report.seed_rule import SEQUENTIAL_CSV_COLUMNS, apply_rule, seed_rule

__all__ = ["ARMS_CSV_COLUMNS", "arm_rows", "csv_columns"]

# `question` (last, so readers by position keep working): the comparison is one of the study's
# questions (Holm's family); False for the baseline and for descriptive comparisons.
ARMS_CSV_COLUMNS = ("arm", "baseline", "n_completed", "n_stopped", "mean", "std", "ci_low",
                    "ci_high", "diff", "p_value", "p_holm", "verdict", "params", "macs",
                    "question")
_ARM_COLUMNS = ("arm", "seed", "status", "stop_reason", "metric_final", "epochs_run",
                "backbone", "params", "macs")
_RUNG_RE = re.compile(r"rung-(\d+)")
_EPOCH_RE = re.compile(r"at epoch (\d+)")


def _seed_values(rows: pd.DataFrame) -> tuple[dict[int, float], list[str]]:
    """{seed: final metric} of completed seeds with a finite value, and notes on the others."""
    values: dict[int, float] = {}
    notes: list[str] = []
    for row in rows.sort_values("seed").itertuples():
        if row.status == "failed":
            notes.append(f"seed {row.seed} failed ({str(row.stop_reason or '')[:80]}): excluded")
        elif row.status == "completed":
            v = row.metric_final
            if v is None or not math.isfinite(float(v)):
                notes.append(f"seed {row.seed} completed without a finite metric: excluded")
            else:
                values[int(row.seed)] = float(v)
    return values, notes


def _stop_point(inputs: SweepInputs, arm: str, stopped: pd.DataFrame) -> tuple[str, float | None]:
    """("rung k (epoch e)", the arm's mean at that rung) for an arm's stopped seeds."""
    dec = inputs.decisions
    if dec is not None and not dec.empty and "action" in dec.columns:
        mine = dec[(dec["arm"] == arm) & (dec["action"] == "stop")].sort_values("rung")
        if not mine.empty:
            first = mine.iloc[0]
            return (f"rung {int(first['rung'])} (epoch {int(first['milestone'])})",
                    float(first["arm_mean"]))
    rungs, epochs = set(), set()
    for row in stopped.itertuples():
        reason = str(row.stop_reason or "")
        r, e = _RUNG_RE.search(reason), _EPOCH_RE.search(reason)
        if r:
            rungs.add(int(r.group(1)))
        epochs.add(int(e.group(1)) if e else int(row.epochs_run))
    mean = stopped["metric_final"].astype(float).mean()
    def span(values: set[int]) -> str:
        return "-".join(str(x) for x in sorted({min(values), max(values)}))

    where = f"epoch {span(epochs)}" if epochs else "an unknown epoch"
    label = f"rung {span(rungs)} ({where})" if rungs else where
    return label, (float(mean) if math.isfinite(mean) else None)


def _size(rows: pd.DataFrame, col: str) -> int | None:
    vals = rows[col].dropna()
    return int(vals.mode().iloc[0]) if not vals.empty else None


def _roles(inputs: SweepInputs) -> dict[str, str]:
    refs = {a.reference for a in inputs.arms if a.reference}
    out = {}
    for a in inputs.arms:
        if a.name == "baseline":
            out[a.name] = "baseline"
        elif a.name == inputs.base_arm:
            out[a.name] = "base"
        elif a.name in refs:
            out[a.name] = "reference"
        else:
            out[a.name] = "arm"
    return out


def _one_arm(inputs: SweepInputs, arm: ArmRecord, role: str, rows: pd.DataFrame) -> dict[str, Any]:
    """The arm's row from its trials (`rows`: the columns _ARM_COLUMNS of its trials)."""
    values, notes = _seed_values(rows)
    stopped = rows[rows["status"] == "stopped"]
    summary = stats.summarize(list(values.values()))
    first = rows.iloc[0] if not rows.empty else None
    out: dict[str, Any] = dict(
        arm=arm.name, baseline=arm.reference or "", role=role,
        backbone=str(first["backbone"]) if first is not None else "",
        n_completed=int((rows["status"] == "completed").sum()), n_stopped=len(stopped),
        n_failed=int((rows["status"] == "failed").sum()), seeds=sorted(values),
        values=values, mean=summary.mean, std=summary.std, ci_low=summary.ci_low,
        ci_high=summary.ci_high, params=_size(rows, "params"), macs=_size(rows, "macs"),
        factors=dict(arm.factors), aliases=list(arm.aliases), state="finished",
        stopped_at="", stop_mean=None, comparison=None, verdict="", notes=notes)
    if rows.empty:
        out.update(state="pending", verdict="no finished trial yet")
    elif not values and len(stopped):
        label, mean = _stop_point(inputs, arm.name, stopped)
        out.update(state="stopped", stopped_at=label, stop_mean=mean,
                   verdict=f"stopped at {label}")
    elif not values:
        out.update(state="failed", verdict="every seed failed")
    elif len(stopped):
        label, _ = _stop_point(inputs, arm.name, stopped)
        seeds = ", ".join(str(int(s)) for s in sorted(stopped["seed"]))
        notes.append(f"seed(s) {seeds} stopped early at {label}: not averaged in")
    return out


def _compare(row: dict[str, Any], ref: dict[str, Any] | None) -> None:
    """Fill row['comparison'] (and a verdict placeholder) from the paired seeds."""
    if row["state"] != "finished" or not row["baseline"]:
        return
    if ref is None or ref["state"] != "finished":
        what = "not in this sweep" if ref is None else f"{ref['state']}"
        row["verdict"] = f"no comparison: reference {row['baseline']} {what}"
        return
    seeds = sorted(set(row["values"]) & set(ref["values"]))
    # Seeds this arm lacks are explained by its own notes (failed, stopped); say which of its
    # finished seeds have no counterpart in the reference.
    unpaired = sorted(set(row["values"]) - set(ref["values"]))
    if unpaired:
        row["notes"].append(f"seed(s) {', '.join(map(str, unpaired))} not finished by "
                            f"{row['baseline']}: left out of the pairing")
    comp = stats.paired_comparison([row["values"][s] for s in seeds],
                                   [ref["values"][s] for s in seeds])
    if comp.p_value is None and comp.n >= 2 and row["question"]:
        comp = _exact(row, [row["values"][s] - ref["values"][s] for s in seeds], comp)
    row["comparison"] = comp
    if not row["question"]:
        row["verdict"] = "descriptive"
    elif comp.p_value is None:
        row["verdict"] = (f"n/a ({comp.n} paired seed{'s' if comp.n != 1 else ''})"
                          if comp.n < 2 else "n/a (zero variance)")
        row["notes"].append(f"no t-test: {comp.note}")


def _exact(row: dict[str, Any], diffs: list[float], comp: stats.PairedComparison
           ) -> stats.PairedComparison:
    """A question's comparison without variance, with the exact sign-flip test's p."""
    from orchestrator.report.questions import EXACT_NOTE

    row["exact_p"] = True
    row["notes"].append(EXACT_NOTE.format(n=comp.n))
    return replace(comp, p_value=stats.sign_flip_p(diffs))


def _descriptive(comp: stats.PairedComparison) -> stats.PairedComparison:
    """A comparison that is not a question: its difference and interval, no test."""
    return replace(comp, t=None, p_value=None, wilcoxon_p=None, wilcoxon_note="")


def arm_rows(inputs: SweepInputs, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """Every arm in plan order: the arms.csv columns, then the details the tables show."""
    roles = _roles(inputs)
    # One pass over the trials (a study may have thousands), with only the columns used.
    narrow = inputs.trials[list(_ARM_COLUMNS)]
    by_arm = {str(name): group for name, group in narrow.groupby("arm", sort=False)}
    rows = [_one_arm(inputs, a, roles[a.name], by_arm.get(a.name, narrow.iloc[:0]))
            for a in inputs.arms]
    by_name = {r["arm"]: r for r in rows}
    questions = asked(inputs)
    for row in rows:
        row["question"] = bool(row["baseline"]) and (
            questions is None or (row["arm"], row["baseline"]) in questions)
        row["exact_p"] = False
        _compare(row, by_name.get(row["baseline"]) if row["baseline"] else None)
        if not row["question"] and row["comparison"] is not None:
            row["comparison"] = _descriptive(row["comparison"])
    tested = [r for r in rows
              if r["comparison"] is not None and r["comparison"].p_value is not None]
    # Arms stopped early were planned comparisons too, and early stopping chose the survivors
    # on the same data: the correction counts them (as p = 1), so stopping arms never makes the
    # survivors look more significant than the full study would.
    stopped = sum(1 for r in rows if r["state"] == "stopped" and r["question"])
    adjusted = stats.holm([r["comparison"].p_value for r in tested] + [1.0] * stopped, alpha)
    for row, p in zip(tested, adjusted, strict=False):  # the stopped arms' p = 1 come last
        row["p_holm"] = p
        row["verdict"] = stats.verdict(row["comparison"].diff_mean, p, inputs.mode, alpha)
    design = seed_rule(inputs.spec)
    if design is not None:
        # Seeds added until decided: the sequential rule's verdicts replace Holm's (seed_rule).
        apply_rule(design, rows, inputs.mode, inputs.spec, inputs.trials)
    for row in rows:
        comp = row.pop("comparison")
        row.setdefault("p_holm", None)
        if row["role"] == "baseline" and row["state"] == "finished":
            row["verdict"] = "reference"
        row.update(
            diff=comp.diff_mean if comp else None, p_value=comp.p_value if comp else None,
            n_pairs=comp.n if comp else 0, diff_sd=comp.diff_sd if comp else None,
            diff_ci_low=comp.ci_low if comp else None, diff_ci_high=comp.ci_high if comp else None,
            t=comp.t if comp else None, d_z=comp.d_z if comp else None,
            wilcoxon_p=comp.wilcoxon_p if comp else None,
            wilcoxon_note=comp.wilcoxon_note if comp else "")
    df = pd.DataFrame(rows)
    if design is not None:
        for col in ("seeds_used", "decided_at"):
            df[col] = df[col].astype("Int64")
    first = csv_columns(df)
    return df[first + [c for c in df.columns if c not in first]]


def csv_columns(df: pd.DataFrame) -> list[str]:
    """arms.csv's columns: ARMS_CSV_COLUMNS, then, for a sweep whose seeds were added by a rule,
    SEQUENTIAL_CSV_COLUMNS (so an ordinary sweep's arms.csv is as it always was)."""
    rule = all(c in df.columns for c in SEQUENTIAL_CSV_COLUMNS)
    return list(ARMS_CSV_COLUMNS) + (list(SEQUENTIAL_CSV_COLUMNS) if rule else [])
