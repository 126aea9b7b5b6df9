"""The locality feed-forward block of LocalViT (Li et al., arXiv 2104.05707, section 3).

A transformer block's `norm2 + MLP` treats each token alone. The locality FFN reshapes the patch
tokens back into their image grid and runs 1x1 conv -> BN -> act -> 3x3 depth-wise conv -> BN -> act
-> (optional SE / ECA channel attention) -> 1x1 conv -> BN, with its own residual and no LayerNorm
before it, so every token also sees its 8 neighbours. Prefix tokens (class / distillation) bypass
it unchanged. Every ablation knob of the paper is a field of `LocalitySpec`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args

import torch
from torch import nn

from .errors import ModelConfigError

__all__ = [
    "ACTIVATIONS",
    "ECA",
    "KNOB_CHECKS",
    "LocalityFeedForward",
    "LocalitySpec",
    "SqueezeExcite",
    "eca_kernel_size",
    "merge_locality",
    "resolve_layers",
]


# The knobs' allowed values, defined once: `LocalitySpec` checks them, and the edge
# (`trainers.config.LocalityConfig`, every field optional) is derived from the same annotations
# and checks.
Activation = Literal["relu6", "hs", "hs+se", "hs+eca", "hs+ecah"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
# gamma: hidden width = gamma * dim; "mlp_ratio" takes the MLP ratio of the block the FFN replaces
# (LocalViT-PVT: 8, 8, 4, 4 over its stages).
Expansion = int | Literal["mlp_ratio"]
# SE hidden width = gamma * dim // reduction; "dim" or "dim/N" is relative to each block's width
# (the hierarchical backbones' rule: "dim" keeps SE hidden = gamma at every width).
Reduction = int | str
# Which blocks: "all", "none", a 1-based inclusive range "a-b", one block number or several.
Layers = str | int | tuple[int, ...]

_REDUCTION_RULE = re.compile(r"dim(/[1-9]\d*)?")
_LAYERS_TEXT = re.compile(r"all|none|\d+\s*-\s*\d+|\d+([,\s]+\d+)*")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_act(value: Any) -> None:
    if value not in ACTIVATIONS:
        raise ValueError(f"must be one of {', '.join(ACTIVATIONS)} but got {value!r}")


def _check_expansion(value: Any) -> None:
    if not (_positive_int(value) or value == "mlp_ratio"):
        raise ValueError(f"must be a positive integer (gamma) or 'mlp_ratio' (the replaced "
                         f"MLP's ratio) but got {value!r}")


def _check_reduction(value: Any) -> None:
    if not (_positive_int(value)
            or (isinstance(value, str) and _REDUCTION_RULE.fullmatch(value))):
        raise ValueError("must be a positive integer (SE hidden = expansion*dim // reduction) or "
                         f"'dim' / 'dim/N' (relative to each block's width) but got {value!r}")


def _check_layers(value: Any) -> None:
    ok = (_positive_int(value)
          or (isinstance(value, str) and _LAYERS_TEXT.fullmatch(value.strip().lower()))
          or (isinstance(value, tuple) and value and all(_positive_int(v) for v in value)))
    if not ok:
        raise ValueError(f"must be 'all', a 1-based range like '1-4', or block numbers like "
                         f"[1, 5] but got {value!r}")


def _check_dw_conv(value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false but got {value!r}")


# knob -> its check (raises ValueError "must be ... but got ..."); one per LocalitySpec field.
KNOB_CHECKS = {"act": _check_act, "expansion": _check_expansion, "reduction": _check_reduction,
               "layers": _check_layers, "dw_conv": _check_dw_conv}


@dataclass(frozen=True)
class LocalitySpec:
    """A fully resolved locality FFN configuration: every ablation knob of the paper.

    `expansion` is gamma, or "mlp_ratio" for the ratio of the MLP the FFN replaces. `reduction`
    is an int (SE hidden width = gamma * dim // reduction) or a rule relative to the block width
    for hierarchical backbones: "dim" (SE hidden = gamma) or "dim/4" (Swin). `layers` is "all", a
    1-based inclusive range "a-b", or a tuple of 1-based block indices (a list becomes a tuple).
    """

    act: Activation = "hs+se"
    expansion: Expansion = 4
    reduction: Reduction = 4
    layers: Layers = "all"
    dw_conv: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        for f in fields(self):
            try:
                KNOB_CHECKS[f.name](getattr(self, f.name))
            except ValueError as err:
                raise ModelConfigError(f"locality.{f.name} {err}") from None

    def gamma(self, mlp_ratio: float | None = None) -> int:
        """The expansion for a block whose MLP ratio is `mlp_ratio`."""
        if self.expansion != "mlp_ratio":
            return self.expansion
        if mlp_ratio is None or mlp_ratio < 1 or mlp_ratio != int(mlp_ratio):
            raise ModelConfigError(
                f"locality.expansion 'mlp_ratio' needs a block with an integer MLP ratio but got "
                f"{mlp_ratio!r}; set locality.expansion to an integer"
            )
        return int(mlp_ratio)

    def se_hidden(self, dim: int, mlp_ratio: float | None = None) -> int:
        """Width of the SE bottleneck for a block of width `dim`."""
        hidden = self.gamma(mlp_ratio) * dim
        if isinstance(self.reduction, str):
            divisor = int(self.reduction.split("/")[1]) if "/" in self.reduction else 1
            reduction = dim // divisor
        else:
            reduction = self.reduction
        return max(1, hidden // reduction)


def resolve_layers(layers: str | int | Iterable[int], depth: int) -> frozenset[int]:
    """1-based block selection -> 0-based indices; raises ModelConfigError outside 1..depth."""
    valid = f"'all', a range like '1-{depth}', or a list of block numbers in 1..{depth}"
    if isinstance(layers, str):
        text = layers.strip().lower()
        if text == "all":
            return frozenset(range(depth))
        if text == "none":
            return frozenset()
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if not 1 <= lo <= hi <= depth:
                raise ModelConfigError(
                    f"locality.layers range {layers!r} is outside this model's {depth} blocks; "
                    f"use {valid}"
                )
            return frozenset(range(lo - 1, hi))
        parts = [p for p in re.split(r"[,\s]+", text) if p]
        if parts and all(p.isdigit() for p in parts):
            return resolve_layers([int(p) for p in parts], depth)
        raise ModelConfigError(f"locality.layers must be {valid} but got {layers!r}")
    if isinstance(layers, bool):
        raise ModelConfigError(f"locality.layers must be {valid} but got {layers!r}")
    items = [layers] if isinstance(layers, int) else list(layers)
    bad = [i for i in items if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= depth]
    if bad or not items:
        raise ModelConfigError(
            f"locality.layers {layers!r} is outside this model's {depth} blocks; use {valid}"
        )
    return frozenset(i - 1 for i in items)


def merge_locality(
    family_default: LocalitySpec,
    variant_default: LocalitySpec | None,
    override: Any = "default",
) -> LocalitySpec | None:
    """Resolve the `locality` argument of create_model.

    "default" keeps the variant's own setting (None for a plain backbone); None turns locality
    off; a mapping, a `trainers.config.LocalityConfig` or a LocalitySpec switches it on, its set
    fields overriding the variant's knobs (or the family defaults for a plain backbone).
    """
    if isinstance(override, str) and override == "default":
        return variant_default
    if override is None:
        return None
    if isinstance(override, LocalitySpec):
        return override
    dump = getattr(override, "model_dump", None)  # the pydantic edge type, LocalityConfig
    if callable(dump):
        knobs = dump(exclude_none=True)
    elif isinstance(override, Mapping):
        knobs = {k: v for k, v in override.items() if v is not None}
        unknown = sorted(set(knobs) - set(LocalitySpec.__dataclass_fields__))
        if unknown:
            raise ModelConfigError(
                f"unknown locality knob(s) {', '.join(unknown)}; valid knobs: "
                f"{', '.join(LocalitySpec.__dataclass_fields__)}"
            )
    else:
        raise ModelConfigError(
            f"locality must be 'default', null or a mapping of knobs but got {override!r}"
        )
    return replace(variant_default or family_default, **knobs)


class SqueezeExcite(nn.Module):
    """SE over channels: pool -> Linear -> ReLU -> Linear -> h-sigmoid gate (with biases)."""

    def __init__(self, channels: int, hidden: int, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(channels, hidden, **kw)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels, **kw)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3))  # (B, C)
        w = self.gate(self.fc2(self.act(self.fc1(w))))
        return x * w[:, :, None, None]


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive kernel size (Wang et al., CVPR 2020) for C channels:
    t = int(|(log2(C) + b) / gamma|), then t if t is odd else t + 1; 5 for C = 192 ... 1152."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ECA(nn.Module):
    """Efficient channel attention: pool -> 1-D conv (adaptive k, no bias) across channels -> gate.

    The kernel size follows ECA-Net's rule for `channels` unless given (docs/paper.md section 2);
    the LocalViT authors' ECA variants use that rule, so a fixed k = 3 would miss 2 parameters
    per block.
    """

    def __init__(self, channels: int, hard_gate: bool = False, kernel_size: int | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False,
                              device=device, dtype=dtype)
        self.gate = nn.Hardsigmoid() if hard_gate else nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3)).unsqueeze(1)  # (B, 1, C)
        w = self.gate(self.conv(w)).squeeze(1)  # (B, C)
        return x * w[:, :, None, None]


def _activation(act: str) -> nn.Module:
    return nn.ReLU6(inplace=True) if act == "relu6" else nn.Hardswish(inplace=True)


class LocalityFeedForward(nn.Module):
    """Replaces `norm2 + MLP` of a transformer block; includes its own residual connection.

    forward(x, grid, num_prefix_tokens): x is (B, P + H*W, C) with P prefix tokens first and the
    patch tokens in row-major order of the (H, W) grid. `mlp_ratio` is the ratio of the MLP this
    block replaces; it sets gamma when `spec.expansion` is "mlp_ratio".
    """

    def __init__(self, dim: int, spec: LocalitySpec, *, mlp_ratio: float | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        hidden = spec.gamma(mlp_ratio) * dim
        layers: list[nn.Module] = [
            nn.Conv2d(dim, hidden, 1, bias=False, **kw),
            nn.BatchNorm2d(hidden, **kw),
            _activation(spec.act),
        ]
        if spec.dw_conv:
            layers += [
                nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False, **kw),
                nn.BatchNorm2d(hidden, **kw),
                _activation(spec.act),
            ]
        if spec.act == "hs+se":
            layers.append(SqueezeExcite(hidden, spec.se_hidden(dim, mlp_ratio), **kw))
        elif spec.act in ("hs+eca", "hs+ecah"):
            layers.append(ECA(hidden, hard_gate=spec.act == "hs+ecah", **kw))
        layers += [nn.Conv2d(hidden, dim, 1, bias=False, **kw), nn.BatchNorm2d(dim, **kw)]
        self.conv = nn.Sequential(*layers)
        self.spec = spec
        # With dim and spec, all that shapes this block (trainers.profile.MacCounter rebuilds it).
        self.mlp_ratio = mlp_ratio

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0
                ) -> torch.Tensor:
        height, width = grid
        prefix, tokens = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
        batch, n, channels = tokens.shape
        # torch._assert: traceable by torch.fx and TorchScript, unlike a Python assert on a size.
        torch._assert(n == height * width, "the patch tokens do not fill the token grid")
        img = tokens.transpose(1, 2).reshape(batch, channels, height, width)  # (B, C, H, W)
        img = img + self.conv(img)
        tokens = img.flatten(2).transpose(1, 2)  # (B, H*W, C)
        return torch.cat([prefix, tokens], dim=1) if num_prefix_tokens > 0 else tokens
