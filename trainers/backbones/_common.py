"""Helpers shared by the backbone builders: architecture overrides and locality block selection."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch
from timm.layers import trunc_normal_
from timm.models import register_notrace_function
from torch import nn

from ..errors import ModelConfigError
from ..locality import LocalitySpec, resolve_layers

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["TOKEN_POOLS", "ClassTokenClassifier", "apply_arch_overrides", "check_global_pool",
           "check_patch_grid", "check_size", "img_hw", "init_vit_weights", "locality_blocks",
           "register_fixed"]

# An architecture dataclass (ViTArch, SwinArch, ...).
A = TypeVar("A", bound="DataclassInstance")


def apply_arch_overrides(arch: A, overrides: Mapping[str, Any], *, model: str = "model",
                         also_valid: Sequence[str] = ()) -> A:
    """`dataclasses.replace` with a clear error for an unknown key; lists become tuples.

    `also_valid`: the other keywords the caller takes (named in the error and its hints)."""
    valid = [f.name for f in dataclasses.fields(arch)]
    unknown = [k for k in overrides if k not in valid]
    if unknown:
        hints = []
        for key in unknown:
            near = difflib.get_close_matches(key, [*valid, *also_valid], n=1)
            hints.append(f"{key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        others = f"; other keywords: {', '.join(also_valid)}" if also_valid else ""
        raise ModelConfigError(
            f"unknown architecture key(s) for {model}: {', '.join(hints)}; "
            f"valid keys: {', '.join(valid)}{others}"
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


# timm's pooling of a class-token backbone: the class token, the mean of the patch tokens, or none.
TOKEN_POOLS = ("token", "avg", "")


def check_global_pool(global_pool: str, valid: tuple[str, ...], model: str) -> str:
    """`global_pool` if `valid` has it; ModelConfigError listing the valid values otherwise."""
    if global_pool not in valid:
        raise ModelConfigError(
            f"global_pool {global_pool!r} is not one {model} supports; use one of "
            f"{', '.join(repr(v) for v in valid)} ('' keeps the unpooled features)"
        )
    return global_pool


@register_notrace_function  # a leaf under torch.fx: the comparison needs concrete sizes
def check_size(height: int, width: int, expected: tuple[int, int], what: str) -> None:
    """Raise ValueError unless `height` x `width` (`what`: an input, a stage's token grid) is the
    `expected` size the model's position embeddings were built for."""
    if height != expected[0] or width != expected[1]:
        raise ValueError(
            what + " is " + str(height) + "x" + str(width) + " but the model was built for "
            + str(expected[0]) + "x" + str(expected[1]) + "; build it with the input's img_size"
        )


def register_fixed(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Keep `tensor` as a buffer `name` of `module` (a fixed tensor is never trained) and list it
    in `module.fixed_tensors`, so `trainers.profile.count_params` counts it as the authors do
    (their code holds such tensors as parameters without gradients)."""
    module.register_buffer(name, tensor)
    cast(Any, module).fixed_tensors = (*getattr(module, "fixed_tensors", ()), name)


class ClassTokenClassifier:
    """timm's classifier interface for a backbone whose classifier reads the class token.

    Mixed into an nn.Module that defines `forward_features` and `num_features`, calls
    `_init_head` once, and defines `_pool` (its features -> (B, C) for `global_pool` "token"
    (the class token) or "avg" (the mean of the patch tokens)) and `forward`
    (`forward_head(forward_features(x))`, in the model's own module: torch.fx wraps the leaf
    functions, such as `check_size`, of the modules whose forward it traces).
    """

    if TYPE_CHECKING:  # declared for the type checker only: TorchScript would read class
        # annotations as attribute types
        head: nn.Module
        head_drop: nn.Module
        num_classes: int
        num_features: int
        head_hidden_size: int
        global_pool: str
        forward_features: Callable[[torch.Tensor], torch.Tensor]

        def _pool(self, x: torch.Tensor) -> torch.Tensor: ...

    def _init_head(self, num_classes: int, global_pool: str, drop_rate: float,
                   model: str) -> None:
        self.global_pool = check_global_pool(global_pool, TOKEN_POOLS, model)
        self.head_hidden_size = self.num_features
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool, TOKEN_POOLS, type(self).__name__)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool:
            x = self._pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)
