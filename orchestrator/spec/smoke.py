"""`--smoke`: shrink any sweep to CPU minutes while keeping its design.

Every trial keeps its arm, its seed and its locality knobs, but runs the small CPU variant of the
same backbone family (registry.smoke_variant: deit_tiny -> vit_micro, localvit_swin_tiny ->
localvit_swin_micro) on the embedded `digits` data at the variant's own small image size, with the
recipe of that data (`digits_cpu`, trainers/recipes.py: every value the trial took from its own
recipe, say the ImageNet one, takes the digits recipe's; values the study chose stay), for a few
capped epochs with light augmentation, on 1 CPU. An ImageNet recipe on 1,437 digits stays at
chance; with the digits recipe a smoke run shows whether the study's arms learn. Locality layer
ranges are mapped onto the small model's depth proportionally (blocks 9-12 of 12 become blocks 3-4
of 4), so placement arms stay distinct. ASHA keeps its role with a grace period of 1 epoch. The
point is to prove that a GPU study's YAML runs end to end (plan, trials, early stopping, tracking)
and learns, before paying for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from orchestrator.spec.model import SchedulerSpec, SweepSpec
from trainers import registry
from trainers.config import switch_recipe
from trainers.locality import resolve_layers

__all__ = ["SMOKE_BATCH", "SMOKE_EPOCHS", "SMOKE_RECIPE", "SMOKE_STEPS_PER_EPOCH",
           "shrink_config", "shrink_spec"]

SMOKE_RECIPE = "digits_cpu"
# About one pass over digits' 1,437 training images per epoch: enough for a LocalViT arm to be
# well above chance at ASHA's first rung (epoch 1), few enough for 19 arms in minutes on 2 cores.
SMOKE_EPOCHS = 3
SMOKE_STEPS_PER_EPOCH = 40
SMOKE_BATCH = 32
SMOKE_SEEDS = 1
SMOKE_SAMPLES = 4
# Light augmentation: 8x8 digits upsampled to 16-32 px have nothing for RandAugment or erasing.
_SMOKE_AUG = {"auto_augment": None, "color_jitter": 0.0, "reprob": 0.0, "mixup": 0.0,
              "cutmix": 0.0}


_SIZE_KEYS = ("depth", "depths", "embed_dim", "embed_dims", "num_heads", "patch_size", "img_size")


def _layer_map(block: int, depth_from: int, depth_to: int) -> int:
    """1-based block of a `depth_from` model -> the block at the same relative depth of
    `depth_to`."""
    return max(1, min(depth_to, math.ceil(block * depth_to / depth_from)))


def _shrink_layers(layers: Any, depth_from: int, depth_to: int) -> Any:
    if depth_from == depth_to or layers in (None, "all", "none"):
        return layers
    blocks = sorted(resolve_layers(layers, depth_from))          # 0-based
    mapped = sorted({_layer_map(b + 1, depth_from, depth_to) for b in blocks})
    if mapped == list(range(mapped[0], mapped[-1] + 1)):
        return f"{mapped[0]}-{mapped[-1]}"
    return mapped


def shrink_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved TrainConfig dict -> the same trial at CPU-minutes scale (idempotent)."""
    out = switch_recipe(cfg, SMOKE_RECIPE)
    model = out["model"]
    source = model["backbone"]
    small = registry.smoke_variant(source)
    model["backbone"] = small
    arch = dict(model.get("arch", {}))
    # Depth/width overrides were written for the full-size model; the small variant keeps its own.
    model["arch"] = {k: v for k, v in arch.items() if k not in _SIZE_KEYS}
    locality = model.get("locality")
    if isinstance(locality, dict) and locality.get("layers") is not None:
        locality["layers"] = _shrink_layers(locality["layers"], registry.depth(source, **arch),
                                            registry.depth(small, **model["arch"]))
    out["data"] = {"name": "digits", "img_size": None, "val_fraction": out["data"]["val_fraction"]}
    train = out["train"]
    train.update(
        epochs=min(train["epochs"], SMOKE_EPOCHS),
        batch_size=min(train["batch_size"], SMOKE_BATCH),
        steps_per_epoch=min(train.get("steps_per_epoch") or SMOKE_STEPS_PER_EPOCH,
                            SMOKE_STEPS_PER_EPOCH),
        warmup_epochs=min(train["warmup_epochs"], 1),
        ema=False,
        amp=False,
    )
    out["aug"] = {**out["aug"], **_SMOKE_AUG}
    out["device"] = "cpu"
    out["threads"] = None
    return out


def shrink_spec(spec: SweepSpec) -> SweepSpec:
    """The run-level part of --smoke: 1 CPU per trial, no GPU, the first seed, few samples, quick
    ASHA."""
    search = spec.search
    update: dict[str, Any] = {}
    if search.asha is not None:
        # The study's own unit (arm or trial), decided before the seeds are cut to one.
        asha = search.asha.model_copy(update={"grace_period": 1, "reduction_factor": 2,
                                              "unit": spec.asha_unit})
        update["scheduler"] = SchedulerSpec(asha=asha)
    if search.space:
        update["num_samples"] = min(search.num_samples, SMOKE_SAMPLES)
    run = spec.run.model_copy(update={
        "resources_per_trial": spec.run.resources_per_trial.model_copy(update={"cpu": 1, "gpu": 0}),
        "max_concurrent": None,
    })
    return spec.model_copy(update={
        # A rule's first seed too: --smoke checks that the trials run, not the decisions.
        "seeds": spec.seed_list[:SMOKE_SEEDS],
        "search": search.model_copy(update=update),
        "run": run,
    })
