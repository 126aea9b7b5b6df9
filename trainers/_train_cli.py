r"""`python -m trainers.train`: train one model from the command line, with a per-epoch table.

    python -m trainers.train --model localvit_micro --data digits --out runs/a   # recipe digits_cpu
    python -m trainers.train --model vit_micro --data digits --epochs 20 --set train.lr=2e-3 \
        --out runs/b
    python -m trainers.train --config configs/digits_cpu.yaml --recipe deit --out runs/c
    python -m trainers.train --out runs/a --resume          # continue after a kill

Without `--recipe` (or a `recipe:` in the config file) the recipe that fits `--data` is chosen
and printed (trainers/recipes.py). Everything is validated before `--out` is touched: bad input
prints one message to stderr and exits 2 with `--out` not created (or, if it existed, left as it
was). The resolved config (recipe values included) is saved as `--out/config.yaml`, headed by the
git commit and library versions that ran it; `--resume` reads it back, so the same command line
is not needed twice. YAML is read strictly (duplicate keys are errors, `1e-3` is a float).
Exit codes: 0 done, 1 the trial diverged, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from trainers._checkpoint import CHECKPOINT_NAME
from trainers._provenance import provenance
from trainers._yaml import load_yaml, yaml_error_where
from trainers.config import ConfigError, apply_overrides, parse_set_args, train_config_from_dict
from trainers.recipes import AUTO, RECIPES
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
            header = "  ".join(h.rjust(w)
                               for (h, _, _), w in zip(self.columns, widths, strict=True))
            self.console.print(f"[bold]{header}[/bold]", highlight=False)
            self._header_done = True
        row = {"epoch": epoch, **metrics}
        cells = [fmt.format(row[key]).rjust(w)
                 for (_, key, fmt), w in zip(self.columns, widths, strict=True)]
        self.console.print("  ".join(cells), highlight=False)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainers.train",
                                description="Train one model (one sweep trial) without Ray.")
    p.add_argument("--config", type=Path, help="YAML TrainConfig to start from")
    p.add_argument("--model", help="model.backbone (e.g. localvit_micro, vit_micro)")
    p.add_argument("--data", help="data.name: digits, cifar10, cifar100, imagefolder, synthetic")
    p.add_argument("--recipe", help="training preset under the explicit values: "
                   + "; ".join(f"{r.name} ({r.summary})" for r in RECIPES.values())
                   + "; default: the one that fits --data")
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
        loaded = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}: not a text file (byte {exc.start} is not UTF-8); "
                          f"give a YAML config") from None
    except yaml.YAMLError as exc:
        where, problem = yaml_error_where(exc, str(path))
        raise ConfigError(f"{what} {where}: not valid YAML: {problem}") from None
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
    if args.recipe is not None:
        overrides["recipe"] = args.recipe
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    overrides.update(parse_set_args(args.sets))
    return train_config_from_dict(apply_overrides(base, overrides), source=source)


def config_yaml_text(cfg: TrainConfig, prov: Mapping[str, Any] | None = None) -> str:
    """The resolved config as YAML, headed by comment lines with the git commit and versions."""
    if prov is None:
        prov = provenance()
    vers = ", ".join(f"{k} {v}" for k, v in prov["versions"].items())
    header = (
        "# Resolved TrainConfig of this run (python -m trainers.train), written at "
        f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}\n"
        f"# git commit: {prov.get('git_commit') or 'unknown (not a git checkout)'}\n"
        f"# versions: {vers}\n"
    )
    return header + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _recipe_line(args: argparse.Namespace, cfg: TrainConfig) -> str:
    summary = RECIPES[cfg.recipe].summary
    if args.recipe is None and not args.resume and _file_recipe(args) in (None, AUTO):
        return (f"recipe {cfg.recipe} (fits data {cfg.data.name}; --recipe chooses another of "
                f"{', '.join(RECIPES)}): {summary}")
    return f"recipe {cfg.recipe}: {summary}"


def _file_recipe(args: argparse.Namespace) -> Any:
    return _load_yaml(args.config, "--config").get("recipe") if args.config else None


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
        (args.out / CONFIG_FILE).write_text(config_yaml_text(cfg))
    console.print(_recipe_line(args, cfg), highlight=False, soft_wrap=True)
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
