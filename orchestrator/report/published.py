"""`--compare-to FILE`: published numbers beside ours (search_spaces/published/localvit.yaml).

The file is validated strictly (pydantic, unknown keys forbidden): a typo is an error naming the
file and the key, never a silently missing column. Each entry lists the arm names it applies to;
an arm matches an entry when its name or one of its aliases is listed. The published gain of an
entry is its top-1 minus its published baseline's (or the `gain` the paper prints when it gives
no baseline top-1). Published values are in percent; our metric is a fraction, shown x 100.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import SpecError
from orchestrator.report.inputs import ReportError, SweepInputs
from orchestrator.report.render import Table, cells
from orchestrator.spec.yaml_file import read_yaml
from trainers.config import format_validation_error

__all__ = ["Published", "PublishedEntry", "comparison_table", "load_published"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PublishedEntry(_Strict):
    model: str
    top1: float | None = None            # percent
    top5: float | None = None            # percent
    params_m: float | None = None        # millions, as printed
    flops_g: float | None = None         # G multiply-accumulates, as printed
    baseline: str | None = None          # `model` of the entry this one is compared with
    gain: float | None = None            # percentage points, where the paper prints only a gain
    arms: list[str] = Field(default_factory=list)
    note: str = ""

    def published_gain(self, entries: dict[str, PublishedEntry]) -> float | None:
        if self.gain is not None:
            return self.gain
        base = entries.get(self.baseline) if self.baseline else None
        if base is None or base.top1 is None or self.top1 is None:
            return None
        return round(self.top1 - base.top1, 6)


class Published(_Strict):
    source: str
    dataset: str
    metric: str = "val/top1"
    unit: Literal["percent"] = "percent"
    entries: list[PublishedEntry] = Field(min_length=1)

    def by_model(self) -> dict[str, PublishedEntry]:
        return {e.model: e for e in self.entries}


def load_published(path: str | os.PathLike[str]) -> Published:
    """Read and validate a published-results file; ReportError naming the file and key."""
    path = Path(path)
    try:
        raw = read_yaml(path)
    except SpecError as exc:
        raise ReportError(f"--compare-to: {exc}".replace("sweep spec", "published-results file")
                          ) from None
    try:
        published = Published.model_validate(raw)
    except ValidationError as err:
        lines = format_validation_error(err, Published, prefix=f"{path}: ")
        raise ReportError("--compare-to: " + "\n  ".join(lines)) from None
    names = published.by_model()
    for i, entry in enumerate(published.entries):
        if entry.baseline is not None and entry.baseline not in names:
            raise ReportError(f"--compare-to: {path}: entries[{i}].baseline: no entry with model "
                              f"'{entry.baseline}'; use one of {', '.join(names)}")
    return published


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or x != x:
        return "—"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def comparison_table(inputs: SweepInputs, df: pd.DataFrame, published: Published,
                     source: str) -> tuple[Table, pd.DataFrame]:
    """The arms that match a published entry, ours beside the paper's; also as a DataFrame."""
    entries = published.by_model()
    aliases = {a.name: set(a.aliases) for a in inputs.arms}
    scale = 100.0
    out_rows, body = [], []
    for r in df.to_dict("records"):
        names = {r["arm"], *aliases.get(r["arm"], ())}
        for entry in published.entries:
            if not names & set(entry.arms):
                continue
            finished = r["state"] == "finished"
            ours = r["mean"] * scale if finished else None
            diff = r["diff"] * scale if finished and r["diff"] is not None else None
            gain = entry.published_gain(entries)
            out_rows.append(dict(
                arm=r["arm"], published_model=entry.model, published_top1=entry.top1,
                published_gain=gain, published_baseline=entry.baseline,
                published_params_m=entry.params_m, published_flops_g=entry.flops_g,
                ours_mean_pct=ours, ours_reference=r["baseline"], ours_diff_pp=diff))
            body.append(cells(r["arm"], entry.model, _pct(entry.top1),
                              f"{_pct(gain, True)}" + (f" vs {entry.baseline}" if entry.baseline
                                                       else ""),
                              _pct(entry.params_m), _pct(entry.flops_g),
                              _pct(ours) if finished else r["verdict"],
                              _pct(diff, True) + (f" vs {r['baseline']}" if r["baseline"] else ""),
                              r["verdict"]))
    notes = [f"Published: {published.source} ({published.dataset}); from {source}.",
             f"Units: published top-1 in percent, gain in percentage points; ours is "
             f"{inputs.metric} (a fraction) x 100, Δ in percentage points against the arm's "
             f"reference.", "Params in M and FLOPs (multiply-accumulates) in G as the paper "
             "prints them."]
    notes += [f"{e.model}: {e.note}" for e in published.entries if e.note and
              any(row["published_model"] == e.model for row in out_rows)]
    if published.metric != inputs.metric:
        notes.append(f"The published values are {published.metric}; this sweep's metric is "
                     f"{inputs.metric}: read the columns side by side with care.")
    if not body:
        notes.append("No arm of this sweep is listed in the file's `arms`; nothing to compare.")
    table = Table("Published results beside ours",
                  ("arm", "published model", "published top-1 (%)",
                   "published gain (pp)", "params (M)", "FLOPs (G)",
                   f"ours: {inputs.metric} × 100 (%)", "ours: Δ (pp)", "our verdict"),
                  tuple(body), tuple(notes), align="llrrrrrrl")
    return table, pd.DataFrame(out_rows)
