"""Named training recipes: the paper's DeiT recipe, and presets that fit small data on a CPU.

A recipe is a named, documented set of `TrainConfig` values: optimizer, schedule, augmentation,
regularisation and where the run executes. `TrainConfig.recipe` names one; its values apply
*under* the config's explicit ones (a value you set wins), and the validated config holds the
recipe's name and every concrete value, so a sweep's trial key and a saved `config.yaml` say
exactly what ran. `recipe: auto` (the default) takes the recipe that fits `data.name`
(`RECIPE_FOR_DATA`): the ImageNet recipe at batch 1024 on 1,437 digits stays at chance.

A key a recipe does not list keeps its `TrainConfig` default (the defaults are the DeiT recipe's).
`trainers.config.switch_recipe` moves a resolved config onto another recipe (what `--smoke` does
when it shrinks an ImageNet study to digits): every value that came from the old recipe takes the
new one's, values the config chose itself stay.

    python -m trainers.train --model localvit_micro --data digits --out runs/a   # digits_cpu
    python -m trainers.train --model localvit_tiny --data imagefolder --set data.root=/data/in1k \
        --recipe deit --out runs/b
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainers._mapping import deep_merge
from trainers.errors import ConfigError

__all__ = [
    "AUTO",
    "RECIPES",
    "RECIPE_FOR_DATA",
    "Recipe",
    "apply_recipe",
    "check_recipe_name",
    "get_recipe",
    "recipe_for_data",
]

AUTO = "auto"


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str                 # one line: what it is for and where it comes from
    values: Mapping[str, Any]    # nested TrainConfig sections, e.g. {"train": {"epochs": 300}}


# The DeiT recipe LocalViT trains with (docs/paper.md section 6; DeiT, Touvron et al. 2021,
# table 9): ImageNet-1k, 300 epochs, batch 1024, AdamW lr 5e-4 x batch/512, cosine to 1e-5 after
# 5 warm-up epochs from 1e-6, drop-path 0.1, RandAugment, random erasing, Mixup/CutMix, label
# smoothing, EMA, mixed precision; evaluation resizes to 256/224 and centre-crops.
DEIT = Recipe(
    "deit",
    "the paper's ImageNet recipe (DeiT): 300 epochs, batch 1024, AdamW, RandAugment, Mixup/CutMix, "
    "EMA, AMP (repeated augmentation is not implemented)",
    {
        "train": {"epochs": 300, "batch_size": 1024, "opt": "adamw", "lr": None,
                  "base_lr": 5e-4, "weight_decay": 0.05, "opt_eps": 1e-8, "sched": "cosine",
                  "min_lr": 1e-5, "warmup_epochs": 5, "warmup_lr": 1e-6, "clip_grad": None,
                  "ema": True, "ema_decay": 0.99996, "amp": True},
        "aug": {"auto_augment": "rand-m9-mstd0.5-inc1", "color_jitter": 0.4, "reprob": 0.25,
                "interpolation": "bicubic", "scale": [0.08, 1.0], "hflip": 0.5,
                "crop_pct": 0.875, "mixup": 0.8, "cutmix": 1.0, "mixup_switch_prob": 0.5,
                "label_smoothing": 0.1},
        "model": {"drop_path": 0.1},
        "device": "auto",
        "threads": None,
    },
)

# scikit-learn's digits (1,437 training images of 8x8 px, upsampled to the model's 16-32 px) on
# a laptop CPU: the DeiT recipe shrunk to ~350 optimizer steps. Mixup/CutMix, RandAugment, random
# erasing and EMA are off (with this few steps they cost accuracy, and EMA at the paper's decay
# averages over far more steps than the run has); crops stay large and nothing is flipped (a
# mirrored digit is another glyph). One intra-op thread: on a loaded 2-core machine two OpenMP
# threads spin-wait on each other (benchmarks/RESULTS.md, trainer section).
DIGITS_CPU = Recipe(
    "digits_cpu",
    "small data on a CPU (scikit-learn digits): 15 epochs, batch 64, AdamW lr 2e-3, light "
    "augmentation, no Mixup/EMA, 1 thread",
    {
        "train": {"epochs": 15, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.05,
                  "warmup_epochs": 2, "min_lr": 1e-5, "ema": False, "amp": False},
        "aug": {"auto_augment": None, "color_jitter": 0.0, "reprob": 0.0, "scale": [0.5, 1.0],
                "hflip": 0.0, "crop_pct": 1.0, "mixup": 0.0, "cutmix": 0.0,
                "label_smoothing": 0.1},
        "model": {"drop_path": 0.0},
        "device": "cpu",
        "threads": 1,
    },
)

# CIFAR-10/100 (50k 32x32 images) from scratch: the DeiT recipe at a small-data scale, as is
# common for training vision transformers on CIFAR (batch 128, absolute lr 1e-3, longer warm-up,
# gentler crops, no EMA). A starting point: not run on this machine (no CIFAR download here).
CIFAR = Recipe(
    "cifar",
    "CIFAR from scratch on a GPU: 200 epochs, batch 128, AdamW lr 1e-3, RandAugment, Mixup/CutMix "
    "(a starting point, not measured here)",
    {
        "train": {"epochs": 200, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.05,
                  "warmup_epochs": 10, "min_lr": 1e-5, "ema": False},
        "aug": {"auto_augment": "rand-m9-mstd0.5-inc1", "color_jitter": 0.0, "reprob": 0.25,
                "scale": [0.6, 1.0], "hflip": 0.5, "crop_pct": 1.0, "mixup": 0.8,
                "cutmix": 1.0, "label_smoothing": 0.1},
        "model": {"drop_path": 0.1},
    },
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (DEIT, DIGITS_CPU, CIFAR)}

# The recipe `recipe: auto` takes for each dataset.
RECIPE_FOR_DATA = {"imagefolder": "deit", "digits": "digits_cpu", "synthetic": "digits_cpu",
                   "cifar10": "cifar", "cifar100": "cifar"}


def check_recipe_name(name: Any) -> None:
    """ValueError ("must be one of ...; did you mean ...?") unless `name` is a recipe or auto."""
    valid = (AUTO, *RECIPES)
    if name not in valid:
        near = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ValueError(f"must be one of {', '.join(valid)} but got {name!r}{hint}")


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; ConfigError with a did-you-mean otherwise."""
    try:
        check_recipe_name(name)
    except ValueError as err:
        raise ConfigError(f"recipe {err}") from None
    if name == AUTO:
        raise ConfigError("recipe 'auto' is chosen by data.name; use recipe_for_data(name)")
    return RECIPES[name]


def recipe_for_data(data_name: Any) -> str | None:
    """The recipe that fits a dataset (None for a name that is not a dataset)."""
    return RECIPE_FOR_DATA.get(data_name) if isinstance(data_name, str) else None


def apply_recipe(data: Mapping[str, Any], default_data: str) -> dict[str, Any]:
    """A raw TrainConfig mapping with its recipe resolved (auto -> the data's; `default_data` is
    the dataset when the mapping names none) and the recipe's values merged under the explicit
    ones. Unknown names pass through for the schema to report."""
    name = data.get("recipe", AUTO)
    if name in (AUTO, None):
        section = data.get("data")
        data_name = section.get("name", default_data) if isinstance(section, Mapping) \
            else default_data
        name = recipe_for_data(data_name)
    if name not in RECIPES:
        return dict(data)
    return {**deep_merge(RECIPES[name].values, data), "recipe": name}
