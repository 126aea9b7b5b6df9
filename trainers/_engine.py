"""One training epoch and one evaluation pass: the inner loops of `trainers.train`.

The training step follows the DeiT recipe (docs/paper.md section 6): Mixup/CutMix on the batch,
soft-target or label-smoothed cross-entropy, mixed precision with a gradient scaler on CUDA,
optional gradient-norm clipping, a per-update learning-rate schedule and an EMA update after each
optimizer step. A non-finite loss stops the trial with `TrialDiverged` before the bad update is
applied.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from timm.scheduler.scheduler import Scheduler
    from timm.utils import ModelEmaV3


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite; the trial cannot continue."""


@dataclass
class StepContext:
    """What a training step needs besides the model and the batch (built once per trial)."""

    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None        # stepped per update
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device
    mixup: Callable | None = None      # timm Mixup: (x, y) -> (mixed x, soft targets)
    ema: ModelEmaV3 | None = None
    scaler: torch.amp.GradScaler | None = None
    amp: bool = False
    clip_grad: float | None = None


@dataclass(frozen=True)
class EpochStats:
    loss: float
    images: int
    steps: int
    seconds: float
    lr: float                          # learning rate of the epoch's last update
    global_step: int


def train_one_epoch(model: nn.Module, batches: Iterable, ctx: StepContext, *, max_steps: int,
                    global_step: int, epoch: int) -> EpochStats:
    model.train()
    start = time.perf_counter()
    loss_sum, images, steps, lr = 0.0, 0, 0, float("nan")
    for x, y in batches:
        if steps >= max_steps:
            break
        x = x.to(ctx.device, non_blocking=True)
        y = y.to(ctx.device, non_blocking=True)
        if ctx.mixup is not None:
            x, y = ctx.mixup(x, y)
        with torch.autocast(device_type=ctx.device.type, dtype=torch.float16, enabled=ctx.amp):
            loss = ctx.criterion(model(x), y)
        loss_value = loss.item()
        lr = ctx.optimizer.param_groups[0]["lr"]
        if not math.isfinite(loss_value):
            raise TrialDiverged(
                f"training loss is {loss_value} at epoch {epoch}, step {steps + 1} (lr {lr:.3g}); "
                f"lower train.lr / train.base_lr or set train.clip_grad"
            )
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.scaler is not None:
            ctx.scaler.scale(loss).backward()
            if ctx.clip_grad is not None:
                ctx.scaler.unscale_(ctx.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), ctx.clip_grad)
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
        else:
            loss.backward()
            if ctx.clip_grad is not None:
                nn.utils.clip_grad_norm_(model.parameters(), ctx.clip_grad)
            ctx.optimizer.step()
        global_step += 1
        if ctx.ema is not None:
            ctx.ema.update(model, step=global_step)
        if ctx.scheduler is not None:
            ctx.scheduler.step_update(num_updates=global_step)
        loss_sum += loss_value * len(x)
        images += len(x)
        steps += 1
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    return EpochStats(loss=loss_sum / max(images, 1), images=images, steps=steps,
                      seconds=time.perf_counter() - start, lr=lr, global_step=global_step)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, *, device: torch.device, amp: bool
             ) -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 accuracy (fractions in [0, 1]) over the whole loader."""
    model.eval()
    loss_sum, correct1, correct5, n = 0.0, 0, 0, 0
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices  # (B, k)
        hits = topk.eq(y[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        n += len(y)
    return {"loss": loss_sum / n, "top1": correct1 / n, "top5": correct5 / n}
