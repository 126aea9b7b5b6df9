"""What a plan will cost, for `--dry-run`: epochs at most and training compute in multiply-adds.

Training compute per trial is estimated as 3 x forward MACs per image (forward, plus a backward
pass that costs about twice the forward) x images per epoch x epochs, plus one forward pass over
the validation set per epoch. MACs come from `trainers.profile.count_macs` on the real model at
the trial's image size, counted once per distinct model. It is an upper bound: ASHA stops most
trials long before their last epoch. Datasets whose size is unknown without scanning files
(imagefolder) are counted as ImageNet-1k (1,281,167 / 50,000 images) and marked as assumed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.plan import Plan

__all__ = ["Estimate", "estimate_plan"]

_IMAGENET = (1_281_167, 50_000)


@dataclass(frozen=True)
class Estimate:
    trials: int
    epochs_max: int                 # sum over trials of train.epochs
    train_macs: float               # upper bound, multiply-adds
    macs_per_image: dict[str, tuple[int, int]]  # backbone@size -> (min, max) forward MACs/image
    assumed_sizes: bool             # True when an imagefolder was counted as ImageNet-1k


def _sizes(cfg: Mapping[str, Any]) -> tuple[int, int, bool]:
    from trainers import data as data_lib
    from trainers.config import DataConfig

    data = DataConfig.model_validate(cfg["data"])
    n_train = data_lib.train_size(data)
    if n_train is None:
        return (*_IMAGENET, True)
    if data.name == "digits":
        n_val = 1797 - n_train
    elif data.name == "synthetic":
        n_val = data.synthetic_val
    else:
        n_val = 10_000
    return n_train, n_val, False


def _model_macs(cfg: Mapping[str, Any], cache: dict[str, int]) -> tuple[str, int]:
    import torch

    from trainers import profile, registry
    from trainers.config import TrainConfig
    from trainers.train import resolve_img_size

    tc = TrainConfig.model_validate(cfg)
    img = resolve_img_size(tc)
    ident = json.dumps([tc.model.model_dump(mode="json"), img], sort_keys=True)
    if ident not in cache:
        try:
            # Shapes only: on the meta device nothing is allocated or computed (seconds -> ms).
            with torch.device("meta"):
                model = registry.build_from_config(tc.model, num_classes=10, img_size=img)
                cache[ident] = profile.count_macs(model, img)
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            model = registry.build_from_config(tc.model, num_classes=10, img_size=img)
            cache[ident] = profile.count_macs(model, img)
    return f"{tc.model.backbone}@{img}px", cache[ident]


def estimate_plan(plan: Plan) -> Estimate:
    configs = [t.config for t in plan.trials]
    if not configs and plan.search_base is not None:
        configs = [plan.search_base] * plan.num_trials
    cache: dict[str, int] = {}
    per_model: dict[str, tuple[int, int]] = {}
    total = 0.0
    assumed = False
    for cfg in configs:
        label, macs = _model_macs(cfg, cache)
        lo, hi = per_model.get(label, (macs, macs))
        per_model[label] = (min(lo, macs), max(hi, macs))
        n_train, n_val, guessed = _sizes(cfg)
        assumed |= guessed
        train = cfg["train"]
        if train.get("steps_per_epoch"):
            n_train = min(n_train, train["steps_per_epoch"] * train["batch_size"])
        total += macs * (3 * n_train + n_val) * train["epochs"]
    return Estimate(trials=len(configs), epochs_max=sum(c["train"]["epochs"] for c in configs),
                    train_macs=total, macs_per_image=per_model, assumed_sizes=assumed)
