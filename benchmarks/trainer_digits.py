"""Trainer benchmark: the small LocalViT and its plain-ViT twin on digits, on this CPU.

Trains each model with `configs/digits_cpu.yaml` (recipe digits_cpu; same seed and budget) through
`trainers.train.train` and prints one Markdown row per model: validation top-1 at the end and at
its best, the first epoch reaching the target, training seconds (sum of `epoch_time_s`, i.e.
training plus per-epoch evaluation, without start-up) and the load average the run shared the
machine with. Run from the repository root:

    python benchmarks/trainer_digits.py                       # localvit_micro, vit_micro
    python benchmarks/trainer_digits.py --models localvit_micro --set train.epochs=30
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainers._yaml import load_yaml  # noqa: E402
from trainers.config import apply_overrides, parse_set_args, train_config_from_dict  # noqa: E402
from trainers.train import train  # noqa: E402


class _Quiet:
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def report(self, metrics, *, epoch, checkpoint_dir):
        self.rows.append({"epoch": epoch, **metrics})
        print(f"  epoch {epoch:>2}  val/top1 {metrics['val/top1']:.4f}  "
              f"{metrics['epoch_time_s']:.1f} s", file=sys.stderr, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "digits_cpu.yaml")
    p.add_argument("--models", nargs="+", default=["localvit_micro", "vit_micro"])
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--set", dest="sets", action="append", default=[])
    args = p.parse_args()
    base = load_yaml(args.config.read_text())
    print(f"| model | params | epochs | final val/top1 | best val/top1 | first epoch >= "
          f"{args.target} (s) | training s | load avg (1 min) before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        overrides = {"model.backbone": name, **parse_set_args(args.sets)}
        cfg = train_config_from_dict(apply_overrides(base, overrides), source=str(args.config))
        load_before = os.getloadavg()[0]
        rec = _Quiet()
        result = train(cfg, rec)
        load_after = os.getloadavg()[0]
        elapsed, first = 0.0, None
        for row in rec.rows:
            elapsed += row["epoch_time_s"]
            if first is None and row["val/top1"] >= args.target:
                first = f"{row['epoch']} ({elapsed:.0f} s)"
        total = sum(r["epoch_time_s"] for r in rec.rows)
        print(f"| {name} | {result.params:,} | {result.epochs_run} | "
              f"{result.final['val/top1']:.4f} | {result.best_top1:.4f} | {first or 'never'} | "
              f"{total:.0f} | {load_before:.1f} / {load_after:.1f} |", flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"config {args.config.relative_to(ROOT)}, threads {cfg.threads}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
