"""The report's PNG plots (matplotlib, imported here only; figures are built with
`matplotlib.figure.Figure` and saved through the Agg canvas, so no pyplot state and no display).

- `size_plots`: the metric against params and against MACs, one point per finished arm with its
  ±1 SD bar over seeds, reference arms marked (the paper's Figure 1); in a backbone study a line
  joins each arm that is nobody's reference to its own reference (the backbone table's pairs);
- `curve_plot`: learning curves per arm, the mean over seeds with a min-max band, the reference's
  mean dashed behind it; a stopped arm's curve ends where it stopped;
- `difference_plot`: each arm's mean difference to its reference with the 95% t interval,
  coloured by verdict; stopped arms are listed without a point;
- `search_plots`: the metric against each searched value, and every trial's curve.

A study of hundreds of arms (a factorial) would give plots nobody can read and that take minutes
to draw (matplotlib's shared axes cost grows with the square of the panels): the curves show at
most `MAX_PANELS` arms and the differences at most `MAX_ROWS`, those with the largest difference
to their reference, and the title says how many of how many; the size plots name the references
and at most `MAX_LABELS` other arms; the search curves show the best `MAX_CURVES` trials.
Every arm and trial stays in arms.csv and the tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

__all__ = ["MAX_CURVES", "MAX_LABELS", "MAX_PANELS", "MAX_ROWS", "curve_plot", "difference_plot",
           "search_plots", "size_plots"]

MAX_PANELS = 24
MAX_ROWS = 40
MAX_LABELS = 12
MAX_CURVES = 50

_COLORS = {"better": "#1a9850", "worse": "#d73027"}
_DPI = 110


def _figure(width: float, height: float):
    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def _finite(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _largest_differences(rows: list[dict], limit: int) -> list[dict]:
    """At most `limit` rows, those with the largest |diff| (rows without one last), in their
    original order."""
    if len(rows) <= limit:
        return rows
    def magnitude(i: int) -> float:
        return abs(rows[i]["diff"]) if _finite(rows[i]["diff"]) else -1.0

    order = sorted(range(len(rows)), key=magnitude, reverse=True)
    return [rows[i] for i in sorted(order[:limit])]


def _wrap(name: str, width: int = 34) -> str:
    """A long arm name (a factorial's `act=hs,layers=all,...`) on lines of about `width`,
    broken after its commas."""
    lines = [""]
    for piece in name.split(","):
        piece = piece if lines == [""] else "," + piece
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines[-1] += ","
            piece = piece[1:]
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def _shown(shown: int, total: int, what: str) -> str:
    return "" if shown == total else (f"\n{shown} of {total} {what} shown: the largest "
                                      f"differences to the reference (all in arms.csv)")


def size_plots(df: pd.DataFrame, metric: str, mode: str, out: Path,
               link_references: bool) -> list[Path]:
    rows = [r for r in df.to_dict("records") if r["state"] == "finished"]
    refs = {r["baseline"] for r in df.to_dict("records") if r["baseline"]}
    by_arm = {r["arm"]: r for r in rows}
    written = []
    for col, label, name in (("params", "parameters", "metric_vs_params.png"),
                             ("macs", "MACs per image", "metric_vs_macs.png")):
        pts = [r for r in rows if _finite(r[col])]
        if not pts:
            continue
        fig = _figure(7.0, 4.8)
        ax = fig.add_subplot()
        if link_references:
            # The pairs of the backbone table: arms that are nobody's reference, to their own.
            for r in (r for r in pts if r["arm"] not in refs):
                ref = by_arm.get(r["baseline"])
                if ref is not None and _finite(ref[col]):
                    ax.plot([ref[col] / 1e6, r[col] / 1e6], [ref["mean"], r["mean"]],
                            color="0.75", lw=1, zorder=1)
        is_ref = {r["arm"]: r["arm"] in refs or r["role"] == "baseline" for r in pts}
        for ref in (True, False):                  # one errorbar call per kind, not per arm
            group = [r for r in pts if is_ref[r["arm"]] == ref]
            if group:
                ax.errorbar([r[col] / 1e6 for r in group], [r["mean"] for r in group],
                            yerr=[r["std"] if _finite(r["std"]) else 0.0 for r in group],
                            fmt="s" if ref else "o", ms=7 if ref else 6, capsize=3, zorder=2,
                            color="black" if ref else "tab:blue",
                            mfc="white" if ref else "tab:blue", ls="none")
        # Names: every arm of a small study; of a large one, the references and the arms with
        # the largest differences (the rest would be an unreadable blot).
        others = [r for r in pts if not is_ref[r["arm"]]]
        named = ({r["arm"] for r in _largest_differences(others, MAX_LABELS)}
                 | {a for a, ref in is_ref.items() if ref})
        for r in pts:
            if r["arm"] in named:
                ax.annotate(r["arm"], (r[col] / 1e6, r["mean"]), textcoords="offset points",
                            xytext=(5, 4), fontsize=7)
        ax.margins(x=0.15, y=0.08)
        ax.set_xlabel(f"{label} (millions)")
        ax.set_ylabel(f"{metric} (final, mean ± 1 SD over seeds)")
        unnamed = len(pts) - len(named)
        ax.set_title(f"{metric} against {label}: squares are reference arms "
                     f"({'higher' if mode == 'max' else 'lower'} is better)"
                     + (f"\n{unnamed} arms unnamed (all in arms.csv)" if unnamed else ""),
                     fontsize=9)
        ax.grid(alpha=0.3)
        written.append(_save(fig, out / name))
    return written


def _curves(by_trial: dict[str, pd.DataFrame], keys: Sequence[str],
            metric: str) -> pd.DataFrame | None:
    parts = [by_trial[k] for k in keys if k in by_trial]
    sub = pd.concat(parts)[["epoch", metric]].dropna() if parts else None
    if sub is None or sub.empty:
        return None
    return sub.groupby("epoch")[metric].agg(["mean", "min", "max"]).reset_index()


def curve_plot(df: pd.DataFrame, trials: pd.DataFrame, epochs: pd.DataFrame, metric: str,
               out: Path) -> list[Path]:
    if metric not in epochs.columns:
        return []
    live = trials[trials["status"] != "failed"]
    keys = {arm: list(g["trial_key"]) for arm, g in live.groupby("arm")}
    every = [r for r in df.to_dict("records") if r["arm"] in keys]
    if not every:
        return []
    rows = _largest_differences(every, MAX_PANELS)
    wanted = {k for r in rows for arm in (r["arm"], r["baseline"]) if arm
              for k in keys.get(arm, [])}
    shown = epochs[epochs["trial_key"].isin(wanted)]
    by_trial = {str(k): g for k, g in shown.groupby("trial_key")}
    ncols = min(4, len(rows))
    nrows = math.ceil(len(rows) / ncols)
    title_lines = max(_wrap(r["arm"]).count("\n") for r in rows)     # extra lines per panel
    fig = _figure(3.1 * ncols, (2.3 + 0.15 * title_lines) * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    for ax, r in zip(axes.flat, rows, strict=False):  # the grid may have spare panels
        ref = _curves(by_trial, keys.get(r["baseline"], []), metric) if r["baseline"] else None
        if ref is not None:
            ax.plot(ref["epoch"], ref["mean"], "--", color="0.55", lw=1,
                    label=f"reference {r['baseline']}")
        cur = _curves(by_trial, keys[r["arm"]], metric)
        if cur is not None:
            ax.fill_between(cur["epoch"], cur["min"], cur["max"], color="tab:blue", alpha=0.25,
                            lw=0)
            ax.plot(cur["epoch"], cur["mean"], "o-", color="tab:blue", lw=1.5,
                    ms=2.5 if len(cur) > 1 else 4)
        n = len(keys[r["arm"]])
        title = f"{_wrap(r['arm'])} ({n} seed{'s' if n != 1 else ''})"
        if r["state"] == "stopped":
            title += f"\nstopped at {r['stopped_at']}"
        ax.set_title(title, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if ref is not None:
            ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    axes.flat[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.supxlabel("epoch", fontsize=9)
    fig.supylabel(metric, fontsize=9)
    fig.suptitle(f"{metric} per epoch: mean over seeds, band min-max over seeds; dashed: the "
                 f"arm's reference{_shown(len(rows), len(every), 'arms')}", fontsize=9)
    return [_save(fig, out / "learning_curves.png")]


def difference_plot(df: pd.DataFrame, metric: str, mode: str, out: Path,
                    basis: str = "Holm p < 0.05") -> list[Path]:
    every = [r for r in df.to_dict("records") if r["baseline"] and
             (_finite(r["diff"]) or r["state"] == "stopped")]
    if not every:
        return []
    rows = _largest_differences(every, MAX_ROWS)
    fig = _figure(7.5, 0.9 + 0.32 * len(rows))
    ax = fig.add_subplot()
    ax.axvline(0.0, color="0.4", lw=1)
    labels = []
    for i, r in enumerate(reversed(rows)):
        labels.append(f"{r['arm']} vs {r['baseline']}")
        if r["state"] == "stopped" or not _finite(r["diff"]):
            ax.annotate(r["verdict"], (0, i), xytext=(6, -3), textcoords="offset points",
                        fontsize=7, color="0.4")
            continue
        color = _COLORS.get(r["verdict"], "0.45")
        if _finite(r["diff_ci_low"]):
            ax.errorbar(r["diff"], i, xerr=[[r["diff"] - r["diff_ci_low"]],
                                            [r["diff_ci_high"] - r["diff"]]],
                        fmt="o", color=color, capsize=3, ms=5)
        else:
            ax.plot(r["diff"], i, "o", color=color, ms=5, mfc="white")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    better = "right" if mode == "max" else "left"
    ax.set_xlabel(f"{metric}: arm − reference (final, paired by seed; 95% t interval; "
                  f"better to the {better})", fontsize=8)
    ax.set_title("Difference to each arm's reference\ngreen better, red worse, grey n.s. "
                 f"({basis}); hollow: no interval (one pair or zero variance)"
                 f"{_shown(len(rows), len(every), 'comparisons')}", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return [_save(fig, out / "differences.png")]


def search_plots(ranked: pd.DataFrame, kinds: dict[str, str], epochs: pd.DataFrame,
                 metric: str, out: Path) -> list[Path]:
    """`kinds`: searched key -> its domain kind (loguniform gets a log axis)."""
    written = []
    keys = [k for k in kinds if k in ranked.columns]
    if keys:
        ncols = 2 if len(keys) == 4 else min(3, len(keys))
        nrows = math.ceil(len(keys) / ncols)
        fig = _figure(3.6 * ncols, 2.9 * nrows + 0.3)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        done = ranked["status"] == "completed"
        for ax, key in zip(axes.flat, keys, strict=False):  # the grid may have spare panels
            x = ranked[key]
            if not pd.api.types.is_numeric_dtype(x):
                cats = sorted({str(v) for v in x})
                position = {c: i for i, c in enumerate(cats)}
                x = x.map(lambda v, pos=position: pos[str(v)])
                ax.set_xticks(range(len(cats)), cats, fontsize=7, rotation=30)
            if done.any():
                ax.scatter(x[done], ranked["metric_final"][done], s=22, color="tab:blue",
                           label="completed")
            if (~done).any():
                ax.scatter(x[~done], ranked["metric_final"][~done], s=22, facecolors="none",
                           edgecolors="tab:orange", label="stopped/failed (value at its end)")
            if kinds[key] == "randint":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if kinds[key] == "loguniform":
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(key, fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        axes.flat[0].legend(fontsize=6)
        for ax in list(axes.flat)[len(keys):]:
            ax.set_visible(False)
        fig.supylabel(f"{metric} (final)", fontsize=9)
        fig.suptitle(f"{metric} against each searched value, one point per trial", fontsize=9)
        written.append(_save(fig, out / "search_values.png"))
    if metric in epochs.columns and not epochs.empty:
        fig = _figure(7.0, 4.2)
        ax = fig.add_subplot()
        best = ranked.head(MAX_CURVES)
        shown = epochs[epochs["trial_key"].isin(list(best["trial_key"]))]
        by_trial = {str(k): g.sort_values("epoch") for k, g in shown.groupby("trial_key")}
        for rank, row in enumerate(best.itertuples(), start=1):
            cur = by_trial.get(str(row.trial_key), shown.iloc[:0])
            ax.plot(cur["epoch"], cur[metric], "o-", ms=3, lw=1.6 if rank == 1 else 0.8,
                    alpha=1.0 if rank == 1 else 0.6,
                    label=f"best: {row.trial_key}" if rank == 1 else None)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        which = ("every trial" if len(best) == len(ranked)
                 else f"the best {len(best)} of {len(ranked)} trials")
        ax.set_title(f"{metric} per epoch, {which} (the best one thicker)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(fig, out / "search_curves.png"))
    return written
