"""Early stopping that answers the study: the same 19-arm x 3-seed digits study three ways.

`benchmarks/asha_savings.yaml` (the LocalViT ablation's axes on the micro models) is run with
1. no early stopping (every trial runs all 15 epochs: the reference answer),
2. per-trial ASHA (Ray's asynchronous successive halving, each trial judged on its own),
3. arm-level halving (the default for a designed study: whole arms stopped together),
each through the real CLI (`python -m orchestrator.sweep`) in its own process, one after the
other. For each: trial-epochs used (sum of `epochs_run`), wall time, the best arm (highest mean
over its completed seeds) and every arm's verdict against the baseline from the sweep's report
(`report/arms.csv`), beside the full run's. The targets: arm-level stopping uses at least 3x fewer
trial-epochs than the full run, finds the same best arm, and stops no arm that the full run finds
significantly better than the baseline.

Run: `python benchmarks/asha_savings.py [--out DIR] [--record]` (about 25 minutes on 2 cores);
`--record` writes the result into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "benchmarks" / "asha_savings.yaml"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
MODES = {
    "full": ["--set", "search.scheduler=none"],
    "trial": ["--set", "search.scheduler.asha.unit=trial"],
    "arm": ["--set", "search.scheduler.asha.unit=arm"],
}
LABELS = {"full": "no early stopping", "trial": "per-trial ASHA", "arm": "arm-level halving"}


def run_mode(mode: str, storage: Path) -> dict:
    name = f"asha-savings-{mode}"
    cmd = [sys.executable, "-m", "orchestrator.sweep", str(SPEC), "--set", f"name={name}",
           "--set", f"run.storage={storage}", *MODES[mode]]
    load = os.getloadavg()[0]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: exit {proc.returncode}\n{proc.stderr[-4000:]}")
    sweep = storage / name
    trials = pd.read_parquet(sweep / "trials.parquet")
    arms = pd.read_csv(sweep / "report" / "arms.csv")
    return {"mode": mode, "wall_s": wall, "load_before": load, "load_after": os.getloadavg()[0],
            "trial_epochs": int(trials["epochs_run"].sum()),
            "stopped_trials": int((trials["status"] == "stopped").sum()),
            "trials": trials, "arms": arms.set_index("arm")}


def best_arm(arms: pd.DataFrame, mode: str = "max") -> str:
    done = arms[arms["n_completed"] > 0].dropna(subset=["mean"])
    return str(done["mean"].idxmax() if mode == "max" else done["mean"].idxmin())


def split_status(trials: pd.DataFrame) -> dict[str, str]:
    """arm -> 'completed', 'stopped@e' (every seed stopped at epoch e) or 'mixed c/s'."""
    out = {}
    for arm, group in trials.groupby("arm"):
        statuses = set(group["status"])
        if statuses == {"completed"}:
            out[arm] = "completed"
        elif statuses == {"stopped"}:
            out[arm] = "stopped@" + "/".join(str(e) for e in sorted(set(group["epochs_run"])))
        else:
            n_c = int((group["status"] == "completed").sum())
            out[arm] = f"mixed {n_c} completed / {len(group) - n_c} stopped"
    return out


def markdown(results: dict[str, dict]) -> str:
    full = results["full"]
    lines = [
        "## Early stopping that answers the study: asha_savings (CPU)",
        "",
        f"Recorded {time.strftime('%Y-%m-%d %H:%M')} by `python benchmarks/asha_savings.py "
        "--record` on this 2-core machine: `benchmarks/asha_savings.yaml` (the ablation's axes "
        "on the micro models, digits, 19 arms x 3 seeds, 15 epochs, ASHA grace 1 / reduction 3 "
        "for both early-stopping runs, 2 trials at a time), each mode through the CLI in its own "
        "process, one after the other. Verdicts are the report's (paired t-test against the "
        "baseline, Holm over the arms, 3 seeds).",
        "",
        "| mode | trial-epochs | vs full | stopped trials | wall s | load avg before/after | "
        "best arm |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        lines.append(
            f"| {LABELS[mode]} | {r['trial_epochs']} | "
            f"{full['trial_epochs'] / r['trial_epochs']:.2f}x fewer | {r['stopped_trials']} | "
            f"{r['wall_s']:.0f} | {r['load_before']:.1f} / {r['load_after']:.1f} | "
            f"{best_arm(r['arms'])} |")
    lines += ["", "| arm | full: mean, verdict | per-trial ASHA: seeds, verdict | "
              "arm-level: seeds, verdict |", "|---|---|---|---|"]
    status = {m: split_status(r["trials"]) for m, r in results.items()}
    for arm in full["arms"].index:
        cells = []
        for mode, r in results.items():
            row = r["arms"].loc[arm]
            mean = "-" if pd.isna(row["mean"]) else f"{row['mean']:.4f}"
            verdict = row["verdict"] if isinstance(row["verdict"], str) else "-"
            cells.append(f"{mean}, {verdict}" if mode == "full"
                         else f"{status[mode][arm]}, {verdict}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    arm = results["arm"]
    better = [a for a in full["arms"].index if full["arms"].loc[a, "verdict"] == "better"]
    lost = [a for a in better if status["arm"][a] != "completed"]
    saving = full["trial_epochs"] / arm["trial_epochs"]
    same_best = best_arm(full["arms"]) == best_arm(arm["arms"])
    lines += [
        "",
        f"- Arm-level halving used **{saving:.2f}x** fewer trial-epochs than the full run "
        f"(target >= 3x: **{'met' if saving >= 3 else 'NOT met'}**); best arm "
        f"{'the same' if same_best else 'DIFFERENT'} ({best_arm(arm['arms'])} vs "
        f"{best_arm(full['arms'])}); of the {len(better)} arms the full run finds significantly "
        f"better than the baseline ({', '.join(better) or 'none'}), arm-level stopping stopped "
        f"{len(lost)}{': ' + ', '.join(lost) if lost else ''}.",
        "- Per-trial ASHA leaves arms with some seeds stopped and others completed ('mixed'): "
        "their means come from fewer seeds than the design has, and which seeds survive depends "
        "on arrival order.",
    ]
    return "\n".join(lines) + "\n"


def record(text: str) -> None:
    begin, end = "<!-- asha-savings:begin -->", "<!-- asha-savings:end -->"
    body = RESULTS.read_text()
    block = f"{begin}\n{text}{end}"
    if begin in body:
        head, rest = body.split(begin, 1)
        body = head + block + rest.split(end, 1)[1]
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="storage folder for the three sweeps (default: a temporary one)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--record", action="store_true", help="write into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    storage = args.out or Path(tempfile.mkdtemp(prefix="asha-savings-"))
    results = {}
    for mode in args.modes:
        print(f"running {LABELS[mode]} ...", file=sys.stderr, flush=True)
        results[mode] = run_mode(mode, storage)
        print(f"  {results[mode]['trial_epochs']} trial-epochs, "
              f"{results[mode]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    if set(results) != set(MODES):
        return 0
    text = markdown(results)
    print(text)
    if args.record:
        record(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
