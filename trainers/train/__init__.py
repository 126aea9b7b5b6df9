"""Train one model: one sweep trial, runnable without Ray.

`train(cfg, reporter)` builds the data, the model (through `trainers.registry`) and the training
recipe the config resolved to (trainers/recipes.py; for ImageNet the DeiT recipe LocalViT trains
with, docs/paper.md section 6: AdamW, cosine schedule with warm-up, Mixup/CutMix, label smoothing,
RandAugment, random erasing, drop-path, EMA, mixed precision) from timm's factories. It reads as
restore / epoch / checkpoint: `_build` (and `_restore` when resuming), then per epoch `_epoch`
(train, evaluate) and `_checkpoint` (the full state saved atomically to `out_dir/checkpoint.pt`,
the metrics appended to `out_dir/metrics.jsonl`), and the reporter gets the metrics. Same seed,
same metrics (on CPU); resuming from the checkpoint of epoch k replays epochs k+1.. exactly as the
uninterrupted run would have.

The trainer knows nothing of Ray or MLflow: a sweep passes a `Reporter`, a person runs
`python -m trainers.train --model localvit_micro --data digits --out runs/a` (the CLI is
trainers/_train_cli.py).
"""

from __future__ import annotations

import difflib
import json
import random
import time
from collections.abc import Mapping, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch

from trainers import data as data_lib
from trainers._atomic import atomic_write
from trainers._checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from trainers._engine import EpochStats, StepContext, TrialDiverged, evaluate, train_one_epoch
from trainers._mapping import flatten
from trainers.config import ConfigError, TrainConfig

__all__ = [
    "EMA_METRICS",
    "EPOCH_METRICS",
    "METRICS_FILE",
    "Reporter",
    "TrainConfig",
    "TrialDiverged",
    "TrialResult",
    "check_resume",
    "metric_names",
    "resolve_device",
    "resolve_img_size",
    "train",
    "validate_config",
]

METRICS_FILE = "metrics.jsonl"
# Schedulers that timm can step per update (plateau needs a metric; wsd/rsqrt are not the recipe).
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "constant")
# Keys that may differ between a checkpoint and the config that resumes it: where and how fast the
# trial runs, never what it computes.
_RUNTIME_KEYS = {"device", "threads", "data.num_workers", "data.root", "data.download"}


class Reporter(Protocol):
    def report(self, metrics: dict[str, float], *, epoch: int, checkpoint_dir: str | None
               ) -> None: ...


@dataclass(frozen=True)
class TrialResult:
    epochs_run: int                 # epochs completed in total (resumed ones included)
    final: dict[str, float]         # the last epoch's metrics
    best_top1: float                # best val/top1 over all epochs
    params: int
    macs: int
    wall_time_s: float              # setup + training + evaluation, summed over resumes
    history: list[dict[str, float]] = field(default_factory=list, repr=False)


# ----------------------------------------------------------------------------------- validation

def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' but no CUDA device is visible; use device=auto or cpu")
    return torch.device(cfg.device)


def resolve_img_size(cfg: TrainConfig) -> int:
    from trainers import registry

    return cfg.data.img_size or registry.default_img_size(cfg.model.backbone)


def _mixup_active(cfg: TrainConfig) -> bool:
    return cfg.aug.mixup > 0 or cfg.aug.cutmix > 0


def validate_config(cfg: TrainConfig) -> None:
    """Raise ConfigError for everything that can be checked before training starts."""
    from timm.optim import list_optimizers

    from trainers import registry

    data_lib.check_data(cfg.data)
    # The image size first (an unknown backbone fails there, with the model check's message),
    # then one model check: backbone, locality knobs, arch keys, then the size.
    img_size = resolve_img_size(cfg)
    registry.check_model_config(cfg.model, img_size=img_size)
    resolve_device(cfg)
    # Names only (no with_description): timm's return type covers both forms.
    opts = cast("list[str]", list_optimizers())
    if cfg.train.opt.lower() not in opts:
        near = difflib.get_close_matches(cfg.train.opt.lower(), opts, n=3)
        raise ConfigError(f"train.opt: unknown optimizer {cfg.train.opt!r}"
                          + (f"; did you mean {', '.join(near)}?" if near else "")
                          + " (any name of timm.optim.list_optimizers())")
    if cfg.train.sched not in SCHEDULERS:
        raise ConfigError(f"train.sched must be one of {', '.join(SCHEDULERS)} "
                          f"but got {cfg.train.sched!r}")
    if _mixup_active(cfg) and cfg.train.batch_size % 2:
        raise ConfigError(f"train.batch_size must be even with Mixup/CutMix (they pair each image "
                          f"with another) but got {cfg.train.batch_size}; use an even batch size "
                          f"or set aug.mixup=0 and aug.cutmix=0")
    lo, hi = cfg.aug.scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"aug.scale must be [min, max] area fractions with 0 < min <= max <= 1 "
                          f"but got {list(cfg.aug.scale)}; the recipe uses [0.08, 1.0]")
    n_train = data_lib.train_size(cfg.data)
    if n_train is not None and cfg.train.batch_size > n_train:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} is larger than the "
                          f"{cfg.data.name} training set ({n_train} images); lower it")
    try:
        data_lib.train_transform(cfg.aug, img_size)
        data_lib.eval_transform(cfg.aug, img_size)
    except (AssertionError, KeyError, ValueError) as exc:
        raise ConfigError(f"aug: timm cannot build the transforms ({exc!r}); check "
                          f"aug.auto_augment (e.g. rand-m9-mstd0.5-inc1) and aug.interpolation "
                          f"(bicubic, bilinear, nearest)") from None


def check_resume(cfg: TrainConfig, resume_from: str | Path) -> None:
    """Raise ConfigError unless `resume_from` holds a checkpoint that `cfg` can continue."""
    _check_resume_compatible(load_checkpoint(resume_from)["config"], cfg)


def _check_resume_compatible(saved: Mapping[str, Any], cfg: TrainConfig) -> None:
    a, b = flatten(saved), flatten(cfg.to_dict())
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RUNTIME_KEYS)
    if diff:
        shown = "; ".join(f"{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}" for k in diff[:5])
        raise ConfigError(f"resume_from: the checkpoint was trained with a different config "
                          f"({shown}); resume with the same config or start a new run")


# ------------------------------------------------------------------------------------- building

def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_step_context(cfg: TrainConfig, model: torch.nn.Module, device: torch.device,
                        num_classes: int, steps_per_epoch: int) -> StepContext:
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    t = cfg.train
    optimizer = create_optimizer_v2(model, opt=t.opt, lr=cfg.effective_lr,
                                    weight_decay=t.weight_decay, momentum=t.momentum,
                                    eps=t.opt_eps)
    # Per-update schedule: warm-up and decay stay smooth even for runs of a few epochs.
    scheduler, _ = create_scheduler_v2(optimizer, sched=t.sched, num_epochs=t.epochs,
                                       min_lr=t.min_lr, warmup_lr=t.warmup_lr,
                                       warmup_epochs=t.warmup_epochs, step_on_epochs=False,
                                       updates_per_epoch=steps_per_epoch)
    a = cfg.aug
    mixup = None
    criterion: torch.nn.Module
    if _mixup_active(cfg):
        mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=1.0,
                      switch_prob=a.mixup_switch_prob, mode="batch",
                      label_smoothing=a.label_smoothing, num_classes=num_classes)
        criterion = SoftTargetCrossEntropy()  # Mixup already folds label smoothing in
    else:
        criterion = torch.nn.CrossEntropyLoss(label_smoothing=a.label_smoothing)
    amp = t.amp and device.type == "cuda"
    return StepContext(
        optimizer=optimizer, scheduler=scheduler, criterion=criterion, device=device,
        mixup=mixup, ema=ModelEmaV3(model, decay=t.ema_decay) if t.ema else None,
        scaler=torch.amp.GradScaler("cuda") if amp else None, amp=amp, clip_grad=t.clip_grad,
    )


def _steps_per_epoch(cfg: TrainConfig, n_train: int) -> tuple[int, bool]:
    drop_last = _mixup_active(cfg)  # Mixup pairs images: every batch must be full (even)
    bs = cfg.train.batch_size
    n_batches = n_train // bs if drop_last else -(-n_train // bs)
    if n_batches == 0:
        raise ConfigError(f"train.batch_size {bs} is larger than the training set "
                          f"({n_train} images); lower it")
    cap = cfg.train.steps_per_epoch
    return (min(n_batches, cap) if cap else n_batches), drop_last


# ------------------------------------------------------------------------------------ the trial

@dataclass
class _Run:
    """Everything one trial carries from epoch to epoch (built once, restored on resume)."""

    cfg: TrainConfig
    device: torch.device
    model: torch.nn.Module
    ctx: StepContext
    bundle: Any                     # data_lib.DataBundle: train / val datasets, classes
    val_loader: Any
    steps: int                      # optimizer steps per epoch
    drop_last: bool
    params: int
    macs: int
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 1
    global_step: int = 0
    prior_wall: float = 0.0         # wall time of the runs this one resumes


def _build(cfg: TrainConfig) -> _Run:
    """Data, model (seeded), optimizer, schedule, Mixup, EMA and scaler of a fresh trial."""
    from trainers import profile, registry

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg)
    img_size = resolve_img_size(cfg)
    _seed_everything(cfg.seed)
    bundle = data_lib.build_datasets(cfg.data, cfg.aug, img_size)
    model = registry.build_from_config(cfg.model, num_classes=bundle.num_classes,
                                       img_size=img_size)
    # Profiling runs a forward pass; keep it from moving any RNG the training depends on.
    with torch.random.fork_rng(devices=[]):
        params = profile.count_params(model)
        macs = profile.count_macs(model, img_size)
    model.to(device)
    assert isinstance(bundle.train, Sized)  # map-style; torch's Dataset type has no __len__
    steps, drop_last = _steps_per_epoch(cfg, len(bundle.train))
    ctx = _build_step_context(cfg, model, device, bundle.num_classes, steps)
    val_loader = data_lib.make_loader(bundle.val, batch_size=cfg.train.batch_size, train=False,
                                      seed=cfg.seed, num_workers=cfg.data.num_workers,
                                      pin_memory=device.type == "cuda")
    return _Run(cfg, device, model, ctx, bundle, val_loader, steps, drop_last, params, macs)


def _restore(run: _Run, ckpt: dict[str, Any]) -> None:
    """Put a checkpoint's training state back: the next epoch replays as if never stopped."""
    ctx = run.ctx
    run.model.load_state_dict(ckpt["model"])
    ctx.optimizer.load_state_dict(ckpt["optimizer"])
    if ctx.scheduler is not None and ckpt["scheduler"] is not None:
        ctx.scheduler.load_state_dict(ckpt["scheduler"])
    if ctx.ema is not None:
        ctx.ema.load_state_dict(ckpt["ema"])
    if ctx.scaler is not None and ckpt["scaler"] is not None:
        ctx.scaler.load_state_dict(ckpt["scaler"])
    run.history = [dict(row) for row in ckpt["history"]]
    run.start_epoch, run.global_step = ckpt["epoch"] + 1, ckpt["global_step"]
    run.prior_wall = float(ckpt["wall_time_s"])
    restore_rng(ckpt["rng"])


def _epoch(run: _Run, epoch: int) -> dict[str, float]:
    """Train one epoch, evaluate the model (and its EMA), return the epoch's metrics."""
    cfg, ctx = run.cfg, run.ctx
    epoch_start = time.perf_counter()
    loader = data_lib.make_loader(run.bundle.train, batch_size=cfg.train.batch_size, train=True,
                                  seed=cfg.seed, epoch=epoch, num_workers=cfg.data.num_workers,
                                  pin_memory=run.device.type == "cuda", drop_last=run.drop_last)
    stats = train_one_epoch(run.model, loader, ctx, max_steps=run.steps,
                            global_step=run.global_step, epoch=epoch)
    run.global_step = stats.global_step
    val = evaluate(run.model, run.val_loader, device=run.device, amp=ctx.amp)
    ema_val = (evaluate(ctx.ema.module, run.val_loader, device=run.device, amp=ctx.amp)
               if ctx.ema is not None else None)
    metrics = _epoch_metrics(stats, val, ema_val, run.params, run.macs)
    metrics["epoch_time_s"] = time.perf_counter() - epoch_start
    # Where the epoch ran, as the trainer resolved it (the config may say `auto`, and mixed
    # precision is on only on CUDA): 1.0 / 0.0, so the sweep's tables and MLflow can show that
    # a GPU trial really trained on the GPU with AMP.
    metrics["train/cuda"] = float(run.device.type == "cuda")
    metrics["train/amp"] = float(ctx.amp)
    return metrics


def _checkpoint(run: _Run, epoch: int, out: Path, wall_time_s: float) -> None:
    """Save the whole training state atomically, then append the epoch to metrics.jsonl."""
    ctx = run.ctx
    save_checkpoint({
        "config": run.cfg.to_dict(),
        "epoch": epoch,
        "global_step": run.global_step,
        "model": run.model.state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "scheduler": ctx.scheduler.state_dict() if ctx.scheduler is not None else None,
        "ema": ctx.ema.state_dict() if ctx.ema is not None else None,
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
        "rng": capture_rng(),
        "history": run.history,
        "wall_time_s": wall_time_s,
    }, out)
    with open(out / METRICS_FILE, "a") as fh:
        fh.write(json.dumps({"epoch": epoch, **run.history[-1]}) + "\n")


def _write_jsonl(path: Path, rows: list[dict[str, float]]) -> None:
    atomic_write(path, lambda fh: fh.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


# The names of the metrics a trial reports each epoch (`_epoch_metrics` and the epoch's timing and
# device flags), and with EMA on, the EMA model's too; the sweep checks its metric against them
# (tests/test_train.py checks them against what a trial reports).
EPOCH_METRICS = ("train/loss", "val/loss", "val/top1", "val/top5", "lr", "train/images_per_s",
                 "params", "macs", "epoch_time_s", "train/cuda", "train/amp")
EMA_METRICS = ("val_ema/loss", "val_ema/top1", "val_ema/top5")


def metric_names(ema: bool) -> frozenset[str]:
    """What every epoch of a trial reports, with `train.ema` as given."""
    return frozenset(EPOCH_METRICS + (EMA_METRICS if ema else ()))


def _epoch_metrics(stats: EpochStats, val: dict[str, float], ema_val: dict[str, float] | None,
                   params: int, macs: int) -> dict[str, float]:
    m = {
        "train/loss": stats.loss,
        "val/loss": val["loss"],
        "val/top1": val["top1"],
        "val/top5": val["top5"],
        "lr": stats.lr,
        "train/images_per_s": stats.images / stats.seconds if stats.seconds > 0 else 0.0,
        "params": float(params),
        "macs": float(macs),
    }
    if ema_val is not None:
        m.update({"val_ema/loss": ema_val["loss"], "val_ema/top1": ema_val["top1"],
                  "val_ema/top5": ema_val["top5"]})
    return m


def train(cfg: TrainConfig, reporter: Reporter | None = None, *,
          out_dir: str | Path | None = None, resume_from: str | Path | None = None,
          checked: bool = False) -> TrialResult:
    """Run (or continue) one trial; see the module docstring. Raises ConfigError, TrialDiverged.

    `checked`: the caller has already run `validate_config` on this config (a sweep validates
    every trial when it plans it; its worker does not check it again)."""
    started = time.perf_counter()
    if not checked:
        validate_config(cfg)
    ckpt = load_checkpoint(resume_from) if resume_from is not None else None
    if ckpt is not None:
        _check_resume_compatible(ckpt["config"], cfg)
    run = _build(cfg)
    if ckpt is not None:
        _restore(run, ckpt)
        del ckpt
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        # A resumed run's file holds exactly the epochs of its checkpoint, never a killed tail.
        _write_jsonl(out / METRICS_FILE,
                     [{"epoch": i + 1, **m} for i, m in enumerate(run.history)])

    for epoch in range(run.start_epoch, cfg.train.epochs + 1):
        metrics = _epoch(run, epoch)
        run.history.append(metrics)
        if out is not None:
            _checkpoint(run, epoch, out, run.prior_wall + time.perf_counter() - started)
        if reporter is not None:
            reporter.report(dict(metrics), epoch=epoch,
                            checkpoint_dir=str(out) if out is not None else None)

    return TrialResult(
        epochs_run=len(run.history),
        final=dict(run.history[-1]),
        best_top1=max(m["val/top1"] for m in run.history),
        params=run.params,
        macs=run.macs,
        wall_time_s=run.prior_wall + time.perf_counter() - started,
        history=run.history,
    )
