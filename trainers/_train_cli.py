"""`python -m trainers.train`: train one model from the command line, with a per-epoch table.

    python -m trainers.train --config configs/digits_cpu.yaml --model localvit_micro --out runs/a
    python -m trainers.train --model vit_micro --data digits --epochs 20 --set train.lr=2e-3 --out runs/b
    python -m trainers.train --out runs/a --resume          # continue after a kill

Everything is validated before `--out` is touched: bad input prints one message to stderr and
exits 2 with `--out` not created (or, if it existed, left as it was). The resolved config is saved
as `--out/config.yaml`; `--resume` reads it back, so the same command line is not needed twice.
Exit codes: 0 done, 1 the trial diverged, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from trainers._checkpoint import CHECKPOINT_NAME
from trainers.config import ConfigError, apply_overrides, parse_set_args, train_config_from_dict
from trainers.train import TrainConfig, TrialDiverged, check_resume, train, validate_config

CONFIG_FILE = "config.yaml"

# (column header, metric key, format)
_COLUMNS = [
    ("epoch", "epoch", "{:>5d}"),
    ("train/loss", "train/loss", "{:>10.4f}"),
    ("val/loss", "val/loss", "{:>8.4f}"),
    ("val/top1", "val/top1", "{:>8.4f}"),
    ("val/top5", "val/top5", "{:>8.4f}"),
    ("lr", "lr", "{:>9.2e}"),
    ("img/s", "train/images_per_s", "{:>7.0f}"),
    ("time s", "epoch_time_s", "{:>6.1f}"),
]


class TableReporter:
    """Prints one aligned row per epoch (header before the first) with rich."""

    def __init__(self, console: Any, ema: bool):
        self.console = console
        self.columns = list(_COLUMNS)
        if ema:
            self.columns.insert(5, ("ema/top1", "val_ema/top1", "{:>8.4f}"))
        self._header_done = False

    def _widths(self) -> list[int]:
        return [max(len(h), len(fmt.format(0 if k == "epoch" else 0.0))) for h, k, fmt in
                self.columns]

    def report(self, metrics: dict[str, float], *, epoch: int, checkpoint_dir: str | None
               ) -> None:
        widths = self._widths()
        if not self._header_done:
            header = "  ".join(h.rjust(w) for (h, _, _), w in zip(self.columns, widths))
            self.console.print(f"[bold]{header}[/bold]", highlight=False)
            self._header_done = True
        row = {"epoch": epoch, **metrics}
        cells = [fmt.format(row[key]).rjust(w) for (_, key, fmt), w in zip(self.columns, widths)]
        self.console.print("  ".join(cells), highlight=False)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainers.train",
                                description="Train one model (one sweep trial) without Ray.")
    p.add_argument("--config", type=Path, help="YAML TrainConfig to start from")
    p.add_argument("--model", help="model.backbone (e.g. localvit_micro, vit_micro)")
    p.add_argument("--data", help="data.name: digits, cifar10, cifar100, imagefolder, synthetic")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any TrainConfig key, e.g. --set train.lr=1e-3 (repeatable)")
    p.add_argument("--out", type=Path, required=True,
                   help="run directory: checkpoint.pt, metrics.jsonl, config.yaml")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint")
    return p


def _load_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{what} {path}: no such file")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: not valid YAML ({exc})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path}: expected a mapping of TrainConfig sections "
                          f"(model, data, train, aug, ...) but got {type(loaded).__name__}")
    return loaded


def resolve_cli_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the command line describes (file or saved run, then flags, then --set)."""
    if args.resume:
        if not (args.out / CHECKPOINT_NAME).is_file():
            raise ConfigError(f"--resume: {args.out} holds no {CHECKPOINT_NAME}; run without "
                              f"--resume to start it")
        if args.config is not None:
            raise ConfigError("--resume reads the run's own config.yaml; drop --config")
        base, source = _load_yaml(args.out / CONFIG_FILE, "--resume config"), \
            str(args.out / CONFIG_FILE)
    elif args.config is not None:
        base, source = _load_yaml(args.config, "--config"), str(args.config)
    else:
        base, source = {}, "command line"
    overrides: dict[str, Any] = {}
    if args.model is not None:
        overrides["model.backbone"] = args.model
    if args.data is not None:
        overrides["data.name"] = args.data
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    overrides.update(parse_set_args(args.sets))
    return train_config_from_dict(apply_overrides(base, overrides), source=source)


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory; choose another path")
    if not resume and out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: already holds files; pass --resume to continue that run "
                          f"or choose a new directory")


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    args = _parser().parse_args(argv)
    console, err = Console(), Console(stderr=True)
    try:
        cfg = resolve_cli_config(args)
        validate_config(cfg)
        _check_out(args.out, args.resume)
        if args.resume:
            check_resume(cfg, args.out)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2

    created = not args.out.exists()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        (args.out / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    console.print(f"training {cfg.model.backbone} on {cfg.data.name} for {cfg.train.epochs} "
                  f"epochs (seed {cfg.seed}) -> {args.out}", highlight=False, soft_wrap=True)
    try:
        result = train(cfg, TableReporter(console, cfg.train.ema), out_dir=args.out,
                       resume_from=args.out if args.resume else None)
    except ConfigError as exc:
        # Found only once data or model were built (e.g. an empty imagefolder split): leave no
        # half-written run behind if this call created the directory.
        if not args.resume and not (args.out / CHECKPOINT_NAME).exists():
            if created:
                shutil.rmtree(args.out, ignore_errors=True)
            else:
                for name in (CONFIG_FILE, "metrics.jsonl"):
                    (args.out / name).unlink(missing_ok=True)
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2
    except TrialDiverged as exc:
        err.print(f"[red]diverged:[/red] {exc}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print(f"interrupted; continue with: python -m trainers.train --out {args.out} "
                  f"--resume", highlight=False)
        return 130
    console.print(
        f"done: {result.epochs_run} epochs, final val/top1 {result.final['val/top1']:.4f}, "
        f"best {result.best_top1:.4f}, {result.params:,} params, {result.macs:,} MACs, "
        f"{result.wall_time_s:.1f} s; metrics in {args.out / 'metrics.jsonl'}", highlight=False,
        soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
