"""The study's answer: statistics, paper-style tables and plots, from a sweep's Parquet tables.

    python -m orchestrator.report SWEEP_DIR [--compare-to FILE]

Reads `SWEEP_DIR/spec.yaml`, `trials.parquet`, `epochs.parquet` (and `decisions.parquet` when
arms were stopped at rungs) and writes `SWEEP_DIR/report/`:

- `ablation.md`, `ablation.tex` (booktabs), `ablation.html`: every arm against its reference
  (the baseline unless the spec's `references` say otherwise), paired by seed: difference with
  its 95% interval, paired t-test, Holm over the study's questions (spec `compare`; the other
  comparisons descriptive), Cohen's d_z, Wilcoxon where
  the number of seeds lets it reach significance, verdict; one table per axis (ofat) as the
  paper's ablation tables; the paper's Table 5 layout for a backbone study; published numbers
  beside ours with `--compare-to` (search_spaces/published/localvit.yaml);
- `arms.csv`: one row per arm (`ARMS_CSV_COLUMNS`);
- PNG plots: the metric against params and MACs, learning curves per arm, the differences;
- for a search (`search.space`): `search.md/.tex/.html`, `trials.csv` (trials ranked with their
  sampled values), `importances.csv` (Optuna), and the metric against each searched value.
The statistics are in `orchestrator.report.stats`; their caveats at 3 seeds are written into
the report.

The report is built in a temporary sibling folder and swapped in with renames, so a failure
leaves the previous `report/` as it was. Bad input raises `ReportError` (a `SweepError`); the CLI
prints it and exits 2. Exit codes: 0 written, 2 bad input (nothing replaced).
"""

from __future__ import annotations

import argparse
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table as RichTable

from orchestrator.layout import REPORT_DIR
from orchestrator.report import plots, stats, tables
from orchestrator.report.arms import ARMS_CSV_COLUMNS, arm_rows, csv_columns
from orchestrator.report.inputs import ReportError, SweepInputs, load_sweep
from orchestrator.report.published import comparison_table, load_published
from orchestrator.report.render import Document, Figure, to_html, to_latex, to_markdown
from orchestrator.report.search import search_result, search_tables
from orchestrator.report.seed_rule import rule_caveats, rule_text, seed_rule
from orchestrator.report.tables import (
    basis_cell,
    basis_head,
    fmt_value,
    short_names,
    wants_backbone_table,
)

if TYPE_CHECKING:
    from rich.console import JustifyMethod

__all__ = ["ARMS_CSV_COLUMNS", "REPORT_DIR", "Report", "ReportError", "main", "verdict_table",
           "write_report"]



@dataclass(frozen=True, eq=False)
class Report:
    directory: Path                      # SWEEP_DIR/report
    sweep: str
    metric: str
    mode: str
    kind: str                            # "design" | "search"
    arms: pd.DataFrame                   # one row per arm: ARMS_CSV_COLUMNS, then details
                                         # (no rows for a search)
    files: tuple[Path, ...]              # every file written, under `directory`
    search: Any | None = None            # search.SearchResult for a search
    published: pd.DataFrame | None = None  # the --compare-to rows, if asked


# ---------------------------------------------------------------------------------- documents

def _counts(inputs: SweepInputs) -> str:
    status = inputs.trials["status"].value_counts()
    return ", ".join(f"{int(status.get(s, 0))} {s}" for s in ("completed", "stopped", "failed"))


def _intro(inputs: SweepInputs, df: pd.DataFrame) -> str:
    from orchestrator.report.questions import asked, descriptive_text, exact_text, family_text

    design = seed_rule(inputs.spec)
    if design is not None:
        # Seeds added until decided: the sequential rule, not Holm, gives the verdicts.
        seeds = ", ".join(str(s) for s in inputs.seeds) or "?"
        ran = sorted({int(n) for n in inputs.trials.groupby("arm")["seed"].nunique()})
        per_arm = f" ({ran[0]} to {ran[-1]} per arm)" if len(ran) > 1 else ""
        return (f"Sweep {inputs.name}: {len(df)} arms, seeds {seeds}{per_arm}, "
                f"{len(inputs.trials)} trials ({_counts(inputs)}). Metric: {inputs.metric}, "
                f"final value (last epoch) of each completed seed; "
                f"{'higher' if inputs.mode == 'max' else 'lower'} is better. Each arm is "
                f"compared with its reference over the seeds both completed (difference = arm "
                f"− reference). " + rule_text(design, df, asked(inputs))
                + " d_z is Cohen's effect size of the paired differences (mean / SD)."
                + descriptive_text(df, "the rule's family"))
    tested = int(df["p_value"].notna().sum())
    stopped = int(((df["state"] == "stopped") & df["question"]).sum())
    family = family_text(inputs, df)
    seeds = ", ".join(str(s) for s in inputs.seeds) or "?"
    better = "higher" if inputs.mode == "max" else "lower"
    return (f"Sweep {inputs.name}: {len(df)} arms, seeds {seeds}, {len(inputs.trials)} trials "
            f"({_counts(inputs)}). Metric: {inputs.metric}, final value (last epoch) of each "
            f"completed seed; {better} is better. Each arm is compared with its reference over "
            f"the seeds both completed (difference = arm − reference): two-sided paired t-test "
            f"(scipy), "
            + (family or f"Holm's correction over the {tested} comparison(s) with a p")
            + (f" and the {stopped} arm(s) stopped early (counted with p = 1: they were planned "
               f"comparisons, and stopping chose the survivors on the same data)"
               if stopped else "")
            + f" (statsmodels), verdict better/worse when the Holm p < {stats.ALPHA:g}, else n.s. "
            f"d_z is Cohen's effect size of the paired differences (mean / SD)."
            + descriptive_text(df) + exact_text(df))


_CAVEATS = (
    "Caveats: with 3 seeds a paired t-test has low power (about 0.32 for a 1-SD effect, "
    "one-sided at 0.95) and assumes normal differences; n.s. is not evidence of no effect. "
    "Wilcoxon's smallest two-sided p with n pairs is 2/2^n (0.25 at 3 seeds), so it is reported "
    "only from 6 pairs on. An arm stopped early (at a rung) has no final estimate: it is shown "
    "where it stopped, never averaged in with finished seeds, and counts in the Holm correction "
    "with p = 1. "
    "Failed seeds are left out of the pairing and named in the notes.")


def _design_document(inputs: SweepInputs, df: pd.DataFrame, published, compare_to,
                     figures: Sequence[Path]) -> tuple[Document, pd.DataFrame | None]:
    doc = Document(f"Report: sweep {inputs.name}")
    doc.text(_intro(inputs, df))
    doc.heading("Verdicts")
    doc.add(tables.arms_table(inputs, df))
    if inputs.axes and inputs.design == "ofat":
        doc.heading("Ablation tables (one per axis)")
        for table in tables.axis_tables(inputs, df):
            doc.add(table)
    elif inputs.axes:
        doc.heading("Factorial design")
        doc.add(tables.factorial_table(inputs, df))
    if tables.wants_backbone_table(inputs):
        doc.heading("Backbones (the paper's Table 5 layout)")
        doc.add(tables.backbone_table(inputs, df))
    rows = None
    if published is not None:
        doc.heading("Published results")
        table, rows = comparison_table(inputs, df, published, str(compare_to))
        doc.add(table)
    doc.heading("Plots")
    captions = {
        "metric_vs_params.png": f"{inputs.metric} against parameters (Figure 1 style)",
        "metric_vs_macs.png": f"{inputs.metric} against MACs per image",
        "learning_curves.png": f"{inputs.metric} per epoch, per arm (band: min-max over seeds)",
        "differences.png": "Difference to each arm's reference with its 95% interval"}
    for path in figures:
        doc.add(Figure(path.name, captions.get(path.name, path.stem)))
    design = seed_rule(inputs.spec)
    doc.text(_CAVEATS if design is None else rule_caveats(design))
    return doc, rows


def _search_document(inputs: SweepInputs, result, figures: Sequence[Path]) -> Document:
    doc = Document(f"Report: search {inputs.name}")
    space = "; ".join(f"{k}: {kind} {values}" for k, (kind, values) in inputs.space.items())
    doc.text(f"Search {inputs.name}: {len(inputs.trials)} trials ({_counts(inputs)}) over "
             f"{space}. Metric: {inputs.metric} ({inputs.mode}), final value of each trial. "
             f"Every trial is one sample: there are no arms to average or to test.")
    doc.heading("Trials")
    found = search_tables(inputs, result)
    doc.add(found[0])
    doc.heading("Parameter importances")
    if result.importances:
        doc.add(found[1])
    else:
        doc.text(f"Parameter importances: {result.importance_note}.")
    doc.heading("Plots")
    for path in figures:
        doc.add(Figure(path.name, {"search_values.png": f"{inputs.metric} against each "
                                   f"searched value", "search_curves.png": f"{inputs.metric} "
                                   f"per epoch, every trial"}.get(path.name, path.stem)))
    return doc


# ----------------------------------------------------------------------------------- building

def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _write_documents(doc: Document, stem: str, out: Path) -> list[Path]:
    return [_write_text(out / f"{stem}.md", to_markdown(doc)),
            _write_text(out / f"{stem}.tex", to_latex(doc)),
            _write_text(out / f"{stem}.html", to_html(doc))]


def _build_design(inputs: SweepInputs, out: Path, published, compare_to) -> dict[str, Any]:
    df = arm_rows(inputs)
    files = [out / "arms.csv"]
    df[csv_columns(df)].to_csv(files[0], index=False)
    figures = plots.size_plots(df, inputs.metric, inputs.mode, out, wants_backbone_table(inputs))
    figures += plots.curve_plot(df, inputs.trials, inputs.epochs, inputs.metric, out)
    figures += plots.difference_plot(df, inputs.metric, inputs.mode, out,
                                     basis="Holm p < 0.05" if seed_rule(inputs.spec) is None
                                     else "sequential rule")
    doc, pub_rows = _design_document(inputs, df, published, compare_to, figures)
    if pub_rows is not None:
        files.append(out / "published.csv")
        pub_rows.to_csv(files[-1], index=False)
    files += _write_documents(doc, "ablation", out) + figures
    return dict(kind="design", arms=df, files=files, published=pub_rows)


def _build_search(inputs: SweepInputs, out: Path) -> dict[str, Any]:
    result = search_result(inputs)
    files = [out / "trials.csv"]
    result.ranked.drop(columns=["stop_reason"]).to_csv(files[0], index=False)
    if result.importances:
        files.append(out / "importances.csv")
        pd.DataFrame({"parameter": list(result.importances),
                      "importance": list(result.importances.values())}).to_csv(files[-1],
                                                                               index=False)
    kinds = {k: kind for k, (kind, _) in inputs.space.items()}
    figures = plots.search_plots(result.ranked, kinds, inputs.epochs, inputs.metric, out)
    files += _write_documents(_search_document(inputs, result, figures), "search", out) + figures
    # A search has no arms: one "hpo" row would average unrelated samples.
    arms = pd.DataFrame(columns=list(ARMS_CSV_COLUMNS))
    return dict(kind="search", arms=arms, files=files, search=result)


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp` with renames; on failure the old folder is put back."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_report(sweep_dir: str | os.PathLike, *, compare_to: str | os.PathLike | None = None
                 ) -> Report:
    """Build SWEEP_DIR/report/ from the sweep's tables; ReportError if an input is missing or
    unreadable (the previous report/ is then left untouched)."""
    inputs = load_sweep(sweep_dir)
    published = None
    if compare_to is not None:
        published = load_published(compare_to)
    final = inputs.directory / REPORT_DIR
    tmp = inputs.directory / f".{REPORT_DIR}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        built = _build_search(inputs, tmp) if inputs.is_search else \
            _build_design(inputs, tmp, published, compare_to)
        _swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = tuple(final / Path(p).name for p in built.pop("files"))
    return Report(directory=final, sweep=inputs.name, metric=inputs.metric, mode=inputs.mode,
                  files=files, **built)


# ------------------------------------------------------------------------------------ terminal

def _fmt(x: Any, signed: bool = False) -> str:
    return fmt_value(x, signed=signed)


def verdict_table(report: Report, max_rows: int = 15):
    """A rich Table for the terminal: per arm its reference, n (completed/stopped), mean ± std,
    difference, Holm p (under a seed rule: the paired seeds of the decision) and verdict; for a
    search, the best trials with their sampled values."""
    if report.kind == "search":
        assert report.search is not None, "a search report has its SearchResult"
        ranked = report.search.ranked
        keys = [c for c in ranked.columns if c not in
                ("rank", "trial_key", "status", "epochs_run", "metric_final", "metric_best",
                 "stop_reason")]
        table = RichTable(title=f"{report.sweep}: best trials by {report.metric} "
                                f"({report.mode})", title_justify="left", box=box.SIMPLE_HEAD,
                      pad_edge=False, collapse_padding=True)
        short = short_names(keys)
        for col in ("rank", "trial", "status", report.metric, *(short[k] for k in keys)):
            table.add_column(col, justify="right" if col in ("rank", report.metric) else "left",
                             no_wrap=col in ("trial", "status"))
        for r in ranked.head(max_rows).to_dict("records"):
            table.add_row(str(r["rank"]), r["trial_key"][:8], r["status"],
                          _fmt(r["metric_final"]),
                          *(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k])
                            for k in keys))
        return table
    # Fits an 80-column terminal without cutting a name (an arm's name is its identity): each
    # arm's reference goes on a second line of its cell, and only the verdict may wrap.
    table = RichTable(title=f"{report.sweep}: {report.metric} ({report.mode}), final value, "
                            f"paired by seed against each arm's reference",
                      title_justify="left", box=box.SIMPLE_HEAD,
                      pad_edge=False, collapse_padding=True)
    rows = report.arms.to_dict("records")
    labels = [r["arm"] + (f"\n  vs {r['baseline']}" if r["baseline"] else "") for r in rows]
    width = max((len(line) for label in labels for line in label.split("\n")), default=3)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("arm", "left"), ("n", "right"), ("mean ± std", "right"), ("diff", "right"),
        (basis_head(report.arms), "right"), ("verdict", "left"))
    for col, just in columns:
        table.add_column(col, justify=just, no_wrap=col != "verdict",
                         min_width=width if col == "arm" else None)
    styles = {"better": "green", "worse": "red"}
    for label, r in zip(labels, rows, strict=True):
        mean = "—" if r["state"] != "finished" else (
            _fmt(r["mean"]) + ("" if r["std"] != r["std"] else f" ± {_fmt(r['std'])}"))
        table.add_row(label, f"{r['n_completed']}/{r['n_stopped']}", mean,
                      _fmt(r["diff"], signed=True), basis_cell(r), r["verdict"],
                      style=styles.get(r["verdict"]))
    return table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.report",
        description="Write SWEEP_DIR/report/: per-arm statistics against each arm's reference "
                    "(paired t-test, Holm), paper-style tables (Markdown, LaTeX, HTML), "
                    "arms.csv and plots, from the sweep's Parquet tables.")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR",
                   help="the sweep's folder, <storage>/<name>/ (e.g. ./sweeps/quickstart)")
    p.add_argument("--compare-to", metavar="FILE", default=None,
                   help="published results to show beside ours, e.g. "
                        "search_spaces/published/localvit.yaml")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    try:
        report = write_report(args.sweep_dir, compare_to=args.compare_to)
    except ReportError as exc:
        err.print(f"error: {exc}", markup=False, soft_wrap=True)
        return 2
    console.print(verdict_table(report))
    console.print(f"Report:   {report.directory} ({len(report.files)} files: "
                  f"{', '.join(p.name for p in report.files)})", markup=False, soft_wrap=True)
    return 0

