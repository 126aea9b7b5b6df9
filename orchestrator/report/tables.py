"""The report's tables of a designed study, laid out like the LocalViT paper's.

- `arms_table`: every arm against its reference (n, mean ± std, CI, size, difference with its
  interval, p, Holm p, d_z, Wilcoxon, verdict);
- `axis_tables` (ofat): one table per axis, rows = the axis values, plus the baseline and the base
  arm for context, as the paper's ablation tables (activation, placement, expansion);
- `factorial_table`: one row per combination, one column per axis;
- `backbone_table`: the paper's Table 5, each arm beside **its own** reference (LocalViT-PVT
  beside PVT, not DeiT).
The best mean of a table (by the metric's mode) is bold; in the backbone table, the better of each
pair. Stopped arms show where they stopped instead of a mean.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from orchestrator.report.inputs import SweepInputs, canonical
from orchestrator.report.render import Cell, Table, cells
from orchestrator.sinks.base import best_of

__all__ = ["arms_table", "axis_tables", "backbone_table", "basis_cell", "basis_head",
           "factorial_table", "fmt_count", "fmt_p", "fmt_value", "short_names",
           "wants_backbone_table"]


# ------------------------------------------------------------------------------------ formatting

def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_value(x: Any, digits: int = 4, signed: bool = False) -> str:
    if _missing(x):
        return "—"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_p(p: Any) -> str:
    if _missing(p):
        return "—"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def fmt_count(n: Any) -> str:
    if _missing(n):
        return "—"
    n = float(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:#.3g}".rstrip(".") + unit
    return f"{n:.0f}"


def _mean_std(row: Mapping[str, Any]) -> str:
    if row["state"] != "finished":
        return "—"
    if _missing(row["std"]):
        return fmt_value(row["mean"])
    return f"{fmt_value(row['mean'])} ± {fmt_value(row['std'])}"


def _ci(low: Any, high: Any) -> str:
    return "—" if _missing(low) else f"[{fmt_value(low)}, {fmt_value(high)}]"


def _diff(row: Mapping[str, Any]) -> str:
    if _missing(row["diff"]):
        return "—"
    ci = "" if _missing(row["diff_ci_low"]) else (
        f" [{fmt_value(row['diff_ci_low'], signed=True)}, "
        f"{fmt_value(row['diff_ci_high'], signed=True)}]")
    return fmt_value(row["diff"], signed=True) + ci


def basis_head(df: pd.DataFrame) -> str:
    """The header of the column a verdict rests on: the Holm p, or under a seed rule (arms.csv's
    `seeds_used` present) the paired seeds of the sequential rule's decision."""
    return "seeds (rule)" if "seeds_used" in df.columns else "p (Holm)"


def basis_cell(row: Mapping[str, Any]) -> str:
    """The Holm p; under a seed rule "decided at 5" (the look that crossed), "8 of 8" (n.s.) or
    "4 of 8" (undecided), or "—" outside the questions and for an arm without paired seeds."""
    if "seeds_used" not in row:
        return fmt_p(row["p_holm"])
    used, at = row["seeds_used"], row["decided_at"]
    if pd.isna(used) or not row["question"] or not row["n_pairs"]:
        return "—"
    if not pd.isna(at):
        return f"decided at {int(at)}" + (f" (look {int(used)})" if int(used) != int(at) else "")
    return f"{int(used)} of {row['seeds_max']}"


def _best(rows: Sequence[Mapping[str, Any]], mode: str) -> float | None:
    return best_of((r["mean"] for r in rows if r["state"] == "finished"
                    and not _missing(r["mean"])), mode)


def _is_best(row: Mapping[str, Any], best: float | None) -> bool:
    return best is not None and row["state"] == "finished" and row["mean"] == best


def _metric_head(inputs: SweepInputs) -> str:
    return f"{inputs.metric} mean ± std"


def _direction(inputs: SweepInputs) -> str:
    return "higher is better" if inputs.mode == "max" else "lower is better"


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """`model.locality.act` -> `act`, unless two keys share a last part (then the full key)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def render_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={render_value(v)}" for k, v in value.items())
    if isinstance(value, str):
        return value
    if value is None:
        return "none"
    return json.dumps(value)


# ---------------------------------------------------------------------------------- arms table

def arms_table(inputs: SweepInputs, df: pd.DataFrame) -> Table:
    rows = df.to_dict("records")
    best = _best(rows, inputs.mode)
    body, notes = [], []
    for r in rows:
        n = f"{r['n_completed']}/{r['n_stopped']}" + (f"/{r['n_failed']}" if r["n_failed"] else "")
        body.append(cells(
            r["arm"], r["baseline"] or "—", n, _mean_std(r), _ci(r["ci_low"], r["ci_high"]),
            fmt_count(r["params"]), fmt_count(r["macs"]), _diff(r), fmt_p(r["p_value"]),
            basis_cell(r), fmt_value(r["d_z"], 2), fmt_p(r["wilcoxon_p"]), r["verdict"],
            bold=[False, False, False, _is_best(r, best)]))
        if r["state"] == "stopped" and not _missing(r["stop_mean"]):
            notes.append(f"{r['arm']}: stopped at {r['stopped_at']} with mean {inputs.metric} "
                         f"{fmt_value(r['stop_mean'])} there (not a final estimate: no p, no "
                         f"verdict)")
        notes += [f"{r['arm']}: {n}" for n in r["notes"]]
    whys = sorted({r["wilcoxon_note"] for r in rows if r["wilcoxon_note"]})
    notes += [f"Wilcoxon signed-rank {w}" for w in whys]
    columns = ("arm", "reference", "n (done/stopped[/failed])", _metric_head(inputs), "95% CI",
               "params", "MACs", "Δ vs reference [95% CI]", "p (t)", basis_head(df), "d_z",
               "p (Wilcoxon)", "verdict")
    return Table(f"Arms against their reference ({inputs.metric}, {_direction(inputs)})",
                 columns, tuple(body), tuple(notes), align="l" + "l" + "r" * 10 + "l")


# -------------------------------------------------------------------------------- axis tables

_UNSET = object()     # the key is not in the trial config: the backbone's own default applies


def _config_value(inputs: SweepInputs, arm: str, key: str) -> Any:
    rows = inputs.trials[inputs.trials["arm"] == arm]
    if rows.empty:
        return _UNSET
    node: Any = json.loads(rows.iloc[0]["config"])
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node or node[part] == "default":
            return _UNSET
        node = node[part]
    return node


def _matches(config_value: Any, value: Any) -> bool:
    if config_value is _UNSET:
        return False
    if isinstance(value, Mapping):
        return isinstance(config_value, Mapping) and all(
            _matches(config_value.get(k), v) for k, v in value.items())
    return canonical(config_value) == canonical(value)


def _arm_for(inputs: SweepInputs, key: str, value: Any) -> str | None:
    want = canonical({key: value})
    for arm in inputs.arms:
        if arm.factors and canonical(dict(arm.factors)) == want:
            return arm.name
    if _matches(_config_value(inputs, inputs.base_arm, key), value):
        return inputs.base_arm
    return None


def _stat_cells(r: Mapping[str, Any], best: float | None) -> tuple[Cell, ...]:
    return (Cell(fmt_count(r["params"])), Cell(fmt_count(r["macs"])),
            Cell(_mean_std(r), _is_best(r, best)), Cell(_diff(r)), Cell(basis_cell(r)),
            Cell(r["verdict"]))


def _stat_columns(inputs: SweepInputs, df: pd.DataFrame) -> tuple[str, ...]:
    return ("params", "MACs", _metric_head(inputs), "Δ vs reference [95% CI]", basis_head(df),
            "verdict")


def axis_tables(inputs: SweepInputs, df: pd.DataFrame) -> list[Table]:
    """One table per ofat axis: baseline, the axis values (the base arm's marked), base."""
    by_arm = {r["arm"]: r for r in df.to_dict("records")}
    short = short_names(list(inputs.axes))
    out = []
    for key, values in inputs.axes.items():
        listed: list[tuple[str, Mapping[str, Any] | None]] = []
        if "baseline" in by_arm:
            listed.append(("baseline", by_arm["baseline"]))
        for value in values:
            arm = _arm_for(inputs, key, value)
            label = render_value(value) + (" (base)" if arm == inputs.base_arm else "")
            listed.append((label, by_arm.get(arm) if arm else None))
        if inputs.base_arm in by_arm and all(r is None or r["arm"] != inputs.base_arm
                                             for _, r in listed):
            value = _config_value(inputs, inputs.base_arm, key)
            shown = "backbone default" if value is _UNSET else render_value(value)
            listed.append((f"{shown} (base)", by_arm[inputs.base_arm]))
        best = _best([r for _, r in listed if r is not None], inputs.mode)
        body = []
        for label, r in listed:
            if r is None:
                body.append(cells(label, "not run", *["—"] * 6))
            else:
                body.append((Cell(label), Cell(r["arm"]), *_stat_cells(r, best)))
        out.append(Table(f"{key} ({inputs.metric}, {_direction(inputs)})",
                         (short[key], "arm", *_stat_columns(inputs, df)), tuple(body),
                         align="ll" + "r" * 5 + "l"))
    return out


def factorial_table(inputs: SweepInputs, df: pd.DataFrame) -> Table:
    keys = list(inputs.axes)
    short = short_names(keys)
    rows = df.to_dict("records")
    best = _best(rows, inputs.mode)
    body = []
    for r in rows:
        factors = r["factors"] or {}
        vals = [render_value(factors[k]) if k in factors else "—" for k in keys]
        body.append((*(Cell(v) for v in vals), Cell(r["arm"]), *_stat_cells(r, best)))
    return Table(f"Factorial design ({inputs.metric}, {_direction(inputs)})",
                 (*(short[k] for k in keys), "arm", *_stat_columns(inputs, df)), tuple(body),
                 align="l" * (len(keys) + 1) + "r" * 5 + "l")


# ----------------------------------------------------------------------------- backbone table

def wants_backbone_table(inputs: SweepInputs) -> bool:
    return inputs.references_given or "model.backbone" in inputs.axes


def _model(r: Mapping[str, Any]) -> str:
    return r["arm"] if r["backbone"] in r["arm"] or not r["backbone"] else \
        f"{r['arm']} [{r['backbone']}]"


def backbone_table(inputs: SweepInputs, df: pd.DataFrame) -> Table:
    """Each arm that is nobody's reference, beside its own reference (the paper's Table 5)."""
    rows = df.to_dict("records")
    by_arm = {r["arm"]: r for r in rows}
    refs = {r["baseline"] for r in rows if r["baseline"]}
    body = []
    for r in rows:
        if not r["baseline"] or r["arm"] in refs or r["baseline"] not in by_arm:
            continue
        ref = by_arm[r["baseline"]]
        best = _best([ref, r], inputs.mode)
        body.append(cells(
            _model(ref), fmt_count(ref["params"]), fmt_count(ref["macs"]), _mean_std(ref),
            _model(r), fmt_count(r["params"]), fmt_count(r["macs"]), _mean_std(r), _diff(r),
            basis_cell(r), r["verdict"],
            bold=[False, False, False, _is_best(ref, best), False, False, False,
                  _is_best(r, best)]))
    m = inputs.metric
    return Table(f"Backbones: each arm beside its own reference ({m}, {_direction(inputs)})",
                 ("reference", "params", "MACs", f"{m} mean ± std", "arm", "params", "MACs",
                  f"{m} mean ± std", "Δ [95% CI]", basis_head(df), "verdict"), tuple(body),
                 align="lrrrlrrrrrl")
