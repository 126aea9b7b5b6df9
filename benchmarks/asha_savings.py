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
`--record` writes the result into benchmarks/RESULTS.md; `--reuse` re-reads the sweeps already in
`--out` (after a report change: each sweep's report is rewritten from its Parquet tables, and the
wall times measured when they ran are read from `timings.json` there).
"""

from __future__ import annotations

import argparse
import json
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
    timing = {"wall_s": wall, "load_before": load, "load_after": os.getloadavg()[0]}
    path = storage / "timings.json"
    timings = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**timings, mode: timing}, indent=1))
    return read_mode(mode, storage, timing)


def read_mode(mode: str, storage: Path, timing: dict) -> dict:
    sweep = storage / f"asha-savings-{mode}"
    trials = pd.read_parquet(sweep / "trials.parquet")
    arms = pd.read_csv(sweep / "report" / "arms.csv")
    return {"mode": mode, **timing,
            "trial_epochs": int(trials["epochs_run"].sum()),
            "stopped_trials": int((trials["status"] == "stopped").sum()),
            "trials": trials, "arms": arms.set_index("arm")}


def best_arms(arms: pd.DataFrame) -> list[str]:
    """The arms with the highest mean over their completed seeds (ties: all of them)."""
    done = arms[arms["n_completed"] > 0].dropna(subset=["mean"])
    top = done["mean"].max()
    return sorted(done.index[(done["mean"] - top).abs() < 1e-12])


def best_arm(arms: pd.DataFrame) -> str:
    return " = ".join(best_arms(arms))


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
        f"Recorded {time.strftime('%Y-%m-%d')} by `python benchmarks/asha_savings.py "
        "--record` on this 2-core machine: `benchmarks/asha_savings.yaml` (the ablation's axes "
        "on the micro models, digits, 19 arms x 3 seeds, 15 epochs, ASHA grace 1 / reduction 3 "
        "for both early-stopping runs, 2 trials at a time), each mode through the CLI in its own "
        "process, one after the other. Verdicts are the report's (paired t-test against the "
        "baseline, Holm over the arms including those stopped early, 3 seeds). Trial-epochs "
        "are deterministic for 'no early stopping' and 'arm-level'; per-trial ASHA's depend "
        "on arrival order.",
        "",
        "| mode | trial-epochs | full / this | stopped trials | wall s | load avg before/after | "
        "best arm(s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        lines.append(
            f"| {LABELS[mode]} | {r['trial_epochs']} | "
            f"{full['trial_epochs'] / r['trial_epochs']:.2f} | {r['stopped_trials']} | "
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
    f_arms = full["arms"]
    better = [a for a in f_arms.index if f_arms.loc[a, "verdict"] == "better"]
    lost = [a for a in better if status["arm"][a] != "completed"]
    raw = [a for a in f_arms.index if f_arms.loc[a, "p_value"] < 0.05
           and f_arms.loc[a, "diff"] > 0]
    raw_lost = [a for a in raw if status["arm"][a] != "completed"]
    saving = full["trial_epochs"] / arm["trial_epochs"]
    found = [a for a in best_arms(arm["arms"]) if a in best_arms(f_arms)]
    lines += [
        "",
        f"- Arm-level halving used **{saving:.2f}x** fewer trial-epochs than the full run "
        f"(target >= 3x: **{'met' if saving >= 3 else 'NOT met'}**).",
        f"- Best arm: the full run's best mean is shared by {best_arm(f_arms)}; arm-level "
        f"halving's best finished arm is {best_arm(arm['arms'])}: "
        f"**{'one of them' if found else 'NOT one of them'}**.",
        f"- Of the arms the full run finds significantly better than the baseline after Holm "
        f"({', '.join(better) or 'none'}), arm-level stopping stopped "
        f"{len(lost)}{': ' + ', '.join(lost) if lost else ''}. Uncorrected (p < 0.05, one "
        f"comparison at a time), {len(raw)} arms beat the baseline in the full run and arm-level "
        f"halving stopped {len(raw_lost)} of them: successive halving looks for the best arms, "
        f"not for every arm that beats the baseline; a study that needs the latter uses "
        f"`rule: paired-test`, which only stops arms shown worse than their reference.",
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
    parser.add_argument("--reuse", action="store_true",
                        help="re-read the sweeps in --out instead of running them")
    args = parser.parse_args(argv)
    if args.reuse and args.out is None:
        parser.error("--reuse needs --out (the folder of the earlier run)")
    storage = args.out or Path(tempfile.mkdtemp(prefix="asha-savings-"))
    results = {}
    for mode in args.modes:
        if args.reuse:
            from orchestrator.report import write_report

            write_report(storage / f"asha-savings-{mode}")
            timing = json.loads((storage / "timings.json").read_text())[mode]
            results[mode] = read_mode(mode, storage, timing)
            continue
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
