"""Helpers shared by the backbone builders: architecture overrides and locality block selection."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from torch import nn

from ..errors import ModelConfigError
from ..locality import LocalitySpec, resolve_layers

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["ClassTokenClassifier", "apply_arch_overrides", "check_patch_grid", "default_cfg",
           "img_hw", "init_vit_weights", "locality_blocks"]

# An architecture dataclass (ViTArch, SwinArch, ...).
A = TypeVar("A", bound="DataclassInstance")


def apply_arch_overrides(arch: A, overrides: Mapping[str, Any], *, model: str = "model") -> A:
    """`dataclasses.replace` with a clear error for an unknown key; lists become tuples."""
    valid = [f.name for f in dataclasses.fields(arch)]
    unknown = [k for k in overrides if k not in valid]
    if unknown:
        hints = []
        for key in unknown:
            near = difflib.get_close_matches(key, valid, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        raise ModelConfigError(
            f"unknown architecture key(s) for {model}: {', '.join(hints)}; "
            f"valid keys: {', '.join(valid)}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    for key, value in values.items():
        current = getattr(arch, key)
        if not _same_kind(current, value):
            raise ModelConfigError(
                f"architecture key {key!r} of {model} expects a value like {current!r} "
                f"({type(current).__name__}) but got {value!r}"
            )
    return dataclasses.replace(arch, **values)


def _same_kind(current: Any, value: Any) -> bool:
    if isinstance(current, bool):
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if isinstance(current, int):
        return isinstance(value, int)
    if isinstance(current, float):
        return isinstance(value, (int, float))
    if isinstance(current, tuple):
        return isinstance(value, tuple) and len(value) > 0
    return isinstance(value, type(current))


def locality_blocks(spec: LocalitySpec | None, depth: int) -> frozenset[int]:
    """0-based indices of the blocks that get the locality FFN (empty when locality is off)."""
    return frozenset() if spec is None else resolve_layers(spec.layers, depth)


def img_hw(img_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(height, width) of an int or a pair; rejects anything else with a clear message."""
    if isinstance(img_size, int) and not isinstance(img_size, bool) and img_size > 0:
        return img_size, img_size
    if (isinstance(img_size, (tuple, list)) and len(img_size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in img_size)):
        return int(img_size[0]), int(img_size[1])
    raise ModelConfigError(
        f"img_size must be a positive integer or a (height, width) pair but got {img_size!r}"
    )


def check_patch_grid(img_size: int | tuple[int, int] | list[int], patch_size: int
                     ) -> tuple[int, int]:
    """(height, width) of an input that a patch embedding of `patch_size` tiles exactly."""
    height, width = img_hw(img_size)
    if height % patch_size or width % patch_size:
        raise ModelConfigError(
            f"image size {height}x{width} is not divisible by the patch size {patch_size}; "
            f"use a multiple of {patch_size}"
        )
    return height, width


def init_vit_weights(module: nn.Module) -> None:
    """The PVT / T2T authors' init: truncated-normal Linear weights, zero biases, unit
    LayerNorms."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def default_cfg(in_chans: int, img_size: tuple[int, int], num_classes: int) -> dict[str, Any]:
    """timm's pretrained-config dict for the hand-written backbones (ImageNet recipe values)."""
    return {
        "input_size": (in_chans, *img_size), "num_classes": num_classes,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "interpolation": "bicubic", "crop_pct": 0.9, "classifier": "head",
    }


class ClassTokenClassifier:
    """timm's classifier interface for a backbone whose head reads the class token.

    Mixed into an nn.Module that defines `forward_features` and `num_features`.
    """

    head: nn.Module
    num_classes: int
    num_features: int
    forward_features: Callable[[torch.Tensor], torch.Tensor]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
