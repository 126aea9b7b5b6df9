"""Wall time and peak memory of `--dry-run` on a large plan, as a user runs it.

Each run is a fresh `python -m orchestrator.sweep SPEC --dry-run` (80-column terminal, output
discarded) with PYTHONPATH set to the checkout measured, so the import of torch and timm is
counted as a user pays it; peak RSS is the child's maximum resident set size. `--root` measures
another checkout of the project (an older commit extracted with `git archive`) with the same
spec; with several roots the runs alternate between them, so that a busy moment of a shared
machine does not land on one side only. The 1-minute load average is printed before and after
every run. `--phases` adds one in-process breakdown per root: imports, build_plan, the estimate,
and the table printed with the estimate.

Run: `python benchmarks/plan_speed.py [--spec benchmarks/plan_10k.yaml] [--repeats 3]
      [--root .] [--root /tmp/old] [--phases]`
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

PHASES = r"""
import io, sys, time
t0 = time.perf_counter()
from rich.console import Console
from orchestrator.plan.estimate import estimate_plan
from orchestrator.plan import build_plan
from orchestrator.spec import load_spec
from orchestrator.sweep import _print_plan
import trainers.registry, trainers.train
t1 = time.perf_counter()
plan = build_plan(load_spec(sys.argv[1], []), source="spec", data_required=False)
t2 = time.perf_counter()
estimate_plan(plan)
t3 = time.perf_counter()
_print_plan(plan, Console(file=io.StringIO(), width=80))
t4 = time.perf_counter()
print(f"imports {t1 - t0:.2f} s, build_plan {t2 - t1:.2f} s ({plan.num_trials} trials, "
      f"{len(plan.arms)} arms), estimate {t3 - t2:.2f} s, table with the estimate {t4 - t3:.2f} s")
"""


def _load() -> float:
    return os.getloadavg()[0]


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "80"}


def dry_run(root: Path, spec: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit code) of one dry run in a fresh interpreter."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.sweep", str(spec), "--dry-run"],
                            cwd=root, env=_env(root), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=HERE / "plan_10k.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, action="append", default=[],
                        help="a checkout of the project to measure (repeatable; default: this one)")
    parser.add_argument("--phases", action="store_true",
                        help="also one in-process breakdown per root")
    args = parser.parse_args(argv)
    roots = [r.resolve() for r in args.root] or [ROOT]
    spec = args.spec.resolve()
    print(f"spec {spec}, {os.cpu_count()} cores")
    results: dict[Path, list[tuple[float, float]]] = {r: [] for r in roots}
    for i in range(args.repeats):
        for root in roots:
            before = _load()
            wall, rss, code = dry_run(root, spec)
            print(f"run {i + 1} {root}: {wall:.1f} s, peak RSS {rss:.0f} MiB, exit {code}, "
                  f"load {before:.2f} before / {_load():.2f} after", flush=True)
            if code == 0:
                results[root].append((wall, rss))
    for root, runs in results.items():
        if runs:
            walls = sorted(w for w, _ in runs)
            print(f"{root}: wall min {walls[0]:.1f} s, median {walls[len(walls) // 2]:.1f} s, "
                  f"peak RSS max {max(r for _, r in runs):.0f} MiB over {len(runs)} runs")
    if args.phases:
        for root in roots:
            before = _load()
            out = subprocess.run([sys.executable, "-c", PHASES, str(spec)], cwd=root,
                                 env=_env(root), capture_output=True, text=True, check=False)
            print(f"phases {root}: {out.stdout.strip() or out.stderr.strip()[-300:]} "
                  f"(load {before:.2f} before / {_load():.2f} after)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
