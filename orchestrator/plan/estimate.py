"""What a plan will cost, for `--dry-run`: epochs at most and training compute in multiply-adds.

Training compute per trial is estimated as 3 x forward MACs per image (forward, plus a backward
pass that costs about twice the forward) x images per epoch x epochs, plus one forward pass over
the validation set per epoch. MACs are `trainers.profile.count_macs` of the real model at the
trial's image size, through `trainers.profile.MacCounter`: one trace per architecture, and for
models that differ only in locality knobs, one per distinct locality FFN. It is an upper bound:
ASHA stops most trials long before their last epoch. Datasets whose size is unknown without
scanning files (imagefolder) are counted as ImageNet-1k (1,281,167 / 50,000 images) and marked as
assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.plan.model import Plan
from trainers import data as data_lib, profile
from trainers.config import DataConfig, TrainConfig
from trainers.train import resolve_img_size

__all__ = ["Estimate", "estimate_plan"]

_IMAGENET = (1_281_167, 50_000)


@dataclass(frozen=True)
class Estimate:
    trials: int
    epochs_max: int                 # sum over trials of train.epochs
    train_macs: float               # upper bound, multiply-adds
    macs_per_image: dict[str, tuple[int, int]]  # backbone@size -> (min, max) forward MACs/image
    assumed_sizes: bool             # True when an imagefolder was counted as ImageNet-1k


def _sizes(data: DataConfig) -> tuple[int, int, bool]:
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


def _model_macs(tc: TrainConfig, counter: Any) -> tuple[str, int]:
    img = resolve_img_size(tc)
    return f"{tc.model.backbone}@{img}px", counter.macs(tc.model, img)


def estimate_plan(plan: Plan) -> Estimate:
    configs = [t.config for t in plan.trials]
    if not configs and plan.search_base is not None:
        configs = [plan.search_base] * plan.num_trials
    counter = profile.MacCounter(num_classes=10)
    # Trials of one arm differ only in their seed: model and data are worked out once per arm.
    per_config: dict[str, tuple[str, int, int, int, bool]] = {}
    idents: dict[tuple[int, int], str] = {}
    per_model: dict[str, tuple[int, int]] = {}
    total = 0.0
    assumed = False
    for cfg in configs:
        # The seeds of an arm share its model and data objects: serialise each pair once.
        pair = (id(cfg.model), id(cfg.data))
        if pair not in idents:
            idents[pair] = cfg.model.model_dump_json() + cfg.data.model_dump_json()
        ident = idents[pair]
        if ident not in per_config:
            per_config[ident] = (*_model_macs(cfg, counter), *_sizes(cfg.data))
        label, macs, n_train, n_val, guessed = per_config[ident]
        lo, hi = per_model.get(label, (macs, macs))
        per_model[label] = (min(lo, macs), max(hi, macs))
        assumed |= guessed
        train = cfg.train
        if train.steps_per_epoch:
            n_train = min(n_train, train.steps_per_epoch * train.batch_size)
        total += macs * (3 * n_train + n_val) * train.epochs
    return Estimate(trials=len(configs), epochs_max=sum(c.train.epochs for c in configs),
                    train_macs=total, macs_per_image=per_model, assumed_sizes=assumed)
