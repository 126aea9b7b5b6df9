"""The orchestrator at 10,000 trials: plan, Parquet sink, read back, report.

Four phases, each in a fresh interpreter so that its wall time includes its imports and its peak
resident memory (the child's ru_maxrss) is its own:

1. `dry-run`: `python -m orchestrator.sweep benchmarks/plan_10k.yaml --dry-run` (400 arms x 25
   seeds + the baseline: 10,025 trials), as a user runs it, output discarded.
2. `feed`: the same plan's 10,025 trials through `tables.ParquetSink` as the driver would send
   them: trial_started, 100 epochs of six metrics each (1,002,500 epoch rows), trial_finished.
   Synthetic values: every arm has its own effect on top of a per-seed offset, so the report has
   something to find. Prints the time of each trial end (median and 99th percentile over the
   first and the last 1,000 trials: flat means the cost does not grow with the sweep) and of
   `finish()` (the final compaction into trials.parquet / epochs.parquet).
3. `read`: `tables.read_trials` + `tables.read_epochs` of that folder, and `pd.read_parquet` of
   the two documented files.
4. `report`: `python -m orchestrator.report SWEEP_DIR` on it (tables, statistics and plots).

The 1-minute load average is printed before each phase. Figures go to benchmarks/RESULTS.md.

Run: `python benchmarks/scale.py [--trials N] [--epochs 100] [--keep DIR]`
(`--trials` takes the first N planned trials, for a quick look).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPEC = HERE / "plan_10k.yaml"
METRICS = ("val/top1", "val/top5", "val/loss", "train/loss", "lr", "epoch_time_s")


def _child(argv: list[str], quiet: bool) -> tuple[float, float, int]:
    """(wall s, peak RSS MiB, exit code) of one command in a fresh interpreter; `quiet`: its
    standard output read and dropped."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "COLUMNS": "80"},
                            stdout=subprocess.PIPE if quiet else None)
    if proc.stdout is not None:
        for _ in proc.stdout:           # a dry run's or the report's table: read and dropped
            pass
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def feed(sweep_dir: Path, trials: int | None, epochs: int) -> None:
    from orchestrator.plan import build_plan
    from orchestrator.plan.record import resolved_spec
    from orchestrator.sinks.base import TrialInfo, TrialOutcome
    from orchestrator.sinks.parquet import ParquetSink
    from orchestrator.spec import load_spec

    t0 = time.perf_counter()
    plan = build_plan(load_spec(str(SPEC), []), source=str(SPEC), data_required=False)
    planned = plan.trials[:trials] if trials else plan.trials
    t1 = time.perf_counter()
    sink = ParquetSink()
    sink.start(sweep_name=sweep_dir.name, storage_dir=str(sweep_dir), spec=resolved_spec(plan),
               metric="val/top1", mode="max", total_trials=len(planned))
    effects = {arm: random.Random(arm).gauss(0.0, 0.01) for arm in {p.arm for p in planned}}
    ends: list[float] = []
    epoch_time = 0.0
    for p in planned:
        rng = random.Random(p.key)
        sink.trial_started(TrialInfo(key=p.key, arm=p.arm, seed=p.seed, config=p.config.to_dict(),
                                     backbone=p.backbone, tags={"design": "factorial"}))
        top = 0.70 + effects[p.arm] + 0.002 * p.seed % 0.01
        best = 0.0
        e0 = time.perf_counter()
        for epoch in range(1, epochs + 1):
            top1 = top * (1 - 0.9 ** epoch) + rng.gauss(0.0, 0.002)
            best = max(best, top1)
            sink.epoch(p.key, epoch, {"val/top1": top1, "val/top5": min(1.0, top1 + 0.2),
                                      "val/loss": 1.0 - top1, "train/loss": rng.random(),
                                      "lr": 5e-4 * (1 - epoch / epochs), "epoch_time_s": 60.0},
                       node="10.0.0.1:abcdef12")
        epoch_time += time.perf_counter() - e0
        outcome = TrialOutcome(p.key, "completed", f"completed all {epochs} epochs", epochs,
                               epochs * 60.0, final={"val/top1": top1}, best={"val/top1": best},
                               params=5_700_000, macs=1_300_000_000)
        start = time.perf_counter()
        sink.trial_finished(outcome)
        ends.append(time.perf_counter() - start)
    t2 = time.perf_counter()
    sink.finish()
    t3 = time.perf_counter()

    def ms(values: list[float]) -> str:
        q = statistics.quantiles(values, n=100)
        return f"median {statistics.median(values) * 1e3:.2f} ms, p99 {q[98] * 1e3:.2f} ms"

    window = min(1000, len(ends) // 2)
    print(f"plan {t1 - t0:.1f} s ({len(planned)} trials); feed {t2 - t1:.1f} s in all "
          f"({epoch_time:.1f} s in epoch(), {sum(ends):.1f} s in trial_finished); "
          f"finish (final compaction) {t3 - t2:.1f} s")
    print(f"trial end, first {window}: {ms(ends[:window])}; last {window}: {ms(ends[-window:])}")


def read(sweep_dir: Path) -> None:
    import pandas as pd

    from orchestrator.sinks.parquet import read_epochs, read_trials

    t0 = time.perf_counter()
    trials, epochs = read_trials(sweep_dir), read_epochs(sweep_dir)
    t1 = time.perf_counter()
    plain = len(pd.read_parquet(sweep_dir / "trials.parquet")), len(
        pd.read_parquet(sweep_dir / "epochs.parquet"))
    t2 = time.perf_counter()
    assert (len(trials), len(epochs)) == plain, (len(trials), len(epochs), plain)
    print(f"read_trials + read_epochs {t1 - t0:.2f} s ({len(trials)} trials, {len(epochs)} epoch "
          f"rows); pd.read_parquet of both files {t2 - t1:.2f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=None, help="only the first N planned trials")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--keep", type=Path, default=None, help="write the sweep here and keep it")
    ap.add_argument("--phase", choices=("feed", "read"), help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase == "feed":
        feed(args.dir, args.trials, args.epochs)
        return 0
    if args.phase == "read":
        read(args.dir)
        return 0

    root = args.keep or Path(tempfile.mkdtemp(prefix="scale-"))
    sweep_dir = root / "plan-10k"
    if sweep_dir.exists():
        shutil.rmtree(sweep_dir)
    me = [sys.executable, str(Path(__file__).resolve())]
    phases = [
        ("dry-run", [sys.executable, "-m", "orchestrator.sweep", str(SPEC), "--dry-run"]),
        ("feed", [*me, "--phase", "feed", "--dir", str(sweep_dir), "--epochs", str(args.epochs),
                  *(["--trials", str(args.trials)] if args.trials else [])]),
        ("read", [*me, "--phase", "read", "--dir", str(sweep_dir)]),
        ("report", [sys.executable, "-m", "orchestrator.report", str(sweep_dir)]),
    ]
    print(f"{os.cpu_count()} cores; sweep folder {sweep_dir}")
    failed = 0
    for name, argv_ in phases:
        load = os.getloadavg()[0]
        wall, rss, code = _child(argv_, quiet=name in ("dry-run", "report"))
        print(f"== {name}: {wall:.1f} s wall, peak RSS {rss:.0f} MiB, exit {code} "
              f"(load {load:.2f} before)", flush=True)
        failed += code != 0
    if args.keep is None:
        shutil.rmtree(root)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
