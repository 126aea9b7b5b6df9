"""Pyramid Vision Transformer v1 (Wang et al., ICCV 2021) with an optional locality FFN (LocalViT).

PVT v1 is four stages; each stage embeds patches with a strided conv + LayerNorm, adds its own
learned position embedding and runs blocks whose attention takes keys and values from a
spatially reduced grid (Conv2d k = s = sr_ratio + LayerNorm). The class token joins at stage 4
(created at stage 4's width, one extra position slot) and the classifier reads it. timm has no PVT
v1, so it is written here; the tiny row matches the authors' model to the last parameter
(13,229,288; LocalViT-PVT 13,456,152, docs/paper.md section 3).

In LocalViT-PVT (Li et al., arXiv 2104.05707) each selected block's `norm2 + MLP` becomes the
locality FFN with gamma = the stage's MLP ratio and SE hidden = gamma (the variant table's
expansion "mlp_ratio", reduction "dim"); the stage-4 class token bypasses it. The blocks are
`_blocks.Block`, shared with T2T-ViT. Token grids are passed explicitly, so non-square inputs work.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import cast

import torch
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from .._timm_compat import feature_take_indices
from ..errors import ModelConfigError
from ..locality import LocalitySpec
from ._blocks import Block
from ._common import (
    ClassTokenClassifier,
    check_size,
    img_hw,
    init_vit_weights,
    locality_blocks,
)

__all__ = [
    "PVTArch",
    "PVT_ARCHS",
    "PyramidVisionTransformer",
    "build_pvt",
    "check_pvt_img_size",
    "pvt_depth",
]


@dataclass(frozen=True)
class PVTArch:
    """One PVT v1 size; every per-stage tuple has one entry per stage."""

    patch_sizes: tuple[int, ...]
    embed_dims: tuple[int, ...]
    num_heads: tuple[int, ...]
    mlp_ratios: tuple[int, ...]
    depths: tuple[int, ...]
    sr_ratios: tuple[int, ...]
    qkv_bias: bool = True
    norm_eps: float = 1e-6  # block and final LayerNorms (patch-embed and SR norms use 1e-5)
    img_size: int = 224

    def __post_init__(self) -> None:
        fields = ("patch_sizes", "embed_dims", "num_heads", "mlp_ratios", "depths", "sr_ratios")
        lengths = {name: len(getattr(self, name)) for name in fields}
        if len(set(lengths.values())) != 1:
            raise ModelConfigError(
                "PVT per-stage settings must all have one entry per stage but got lengths "
                f"{lengths}"
            )
        for name in fields:
            values = getattr(self, name)
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ModelConfigError(
                    f"PVT {name} must be positive integers but got {values!r}"
                )
        for dim, heads in zip(self.embed_dims, self.num_heads, strict=True):
            if dim % heads:
                raise ModelConfigError(
                    f"PVT embed_dims must be divisible by num_heads stage by stage but got "
                    f"{self.embed_dims} and {self.num_heads}"
                )


PVT_ARCHS: dict[str, PVTArch] = {
    # PVT-Tiny, Wang et al. 2021 Table 1 (the authors' `pvt_tiny`).
    "pvt_tiny": PVTArch(
        patch_sizes=(4, 2, 2, 2), embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4), depths=(2, 2, 2, 2), sr_ratios=(8, 4, 2, 1),
    ),
    # CPU smoke size: same four-stage layout, one block per stage, 16-32 px inputs.
    "pvt_micro": PVTArch(
        patch_sizes=(2, 2, 2, 2), embed_dims=(32, 48, 64, 96), num_heads=(1, 2, 2, 4),
        mlp_ratios=(4, 4, 2, 2), depths=(1, 1, 1, 1), sr_ratios=(4, 2, 1, 1), img_size=32,
    ),
}


def pvt_depth(arch: PVTArch) -> int:
    """Transformer blocks in forward order (the range of the locality `layers` knob)."""
    return sum(arch.depths)


def check_pvt_img_size(arch: PVTArch, img_size: int | tuple[int, int] | None
                       ) -> list[tuple[int, int]]:
    """Token grid of every stage for `img_size`; ModelConfigError if the model cannot take it."""
    height, width = img_hw(arch.img_size if img_size is None else img_size)
    stride = prod(arch.patch_sizes)
    # Every stage's side must stay >= its spatial-reduction ratio (at least one key/value token).
    min_side = max(stride, *(prod(arch.patch_sizes[: i + 1]) * r
                             for i, r in enumerate(arch.sr_ratios)))
    ok = height > 0 and width > 0 and height % stride == 0 and width % stride == 0
    ok = ok and min(height, width) >= min_side
    if not ok:
        raise ModelConfigError(
            f"PVT with patch sizes {arch.patch_sizes} and spatial-reduction ratios "
            f"{arch.sr_ratios} needs image sides that are multiples of {stride} and at least "
            f"{min_side} px but got {height}x{width}; use e.g. {max(min_side, stride)} or "
            f"{arch.img_size}"
        )
    grids = []
    for patch in arch.patch_sizes:
        height, width = height // patch, width // patch
        grids.append((height, width))
    return grids


class PatchEmbed(nn.Module):
    """Conv2d(k = s = patch, with bias) + LayerNorm: (B, C, H, W) -> (B, H/p * W/p, D), on the
    token grid `grid` it was built for."""

    def __init__(self, in_chans: int, dim: int, patch: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, H', W')
        check_size(x.shape[2], x.shape[3], self.grid, "the token grid of a PVT stage")
        return self.norm(x.flatten(2).transpose(1, 2))  # (B, H'*W', D)


class PVTStage(nn.Module):
    """Patch embedding + learned position embedding (+ class token slot) + blocks."""

    def __init__(self, in_chans: int, dim: int, patch: int, grid: tuple[int, int],
                 num_prefix_tokens: int, blocks: list[Block]) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_chans, dim, patch, grid)
        self.grid = grid
        self.num_prefix_tokens = num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, num_prefix_tokens + grid[0] * grid[1], dim))
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, cls_token: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> tokens (B, P + H'*W', D), the class token first where given."""
        # The class token is passed as the parameter itself and expanded here: an expanded view
        # made under no_grad trips torch's module tracker (used by the flop counter).
        x = self.patch_embed(x)
        if cls_token is not None:
            x = torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, self.grid, self.num_prefix_tokens, use_reentrant=False)
            else:
                x = block(x, self.grid, self.num_prefix_tokens)
        return x


class PyramidVisionTransformer(ClassTokenClassifier, nn.Module):
    """PVT v1 classifier; `locality` (one spec, or None) selects blocks by `spec.layers`.

    timm's model interface: `forward_features` returns the final normalised stage-4 tokens as a
    (B, C, 1 + H*W, 1) map, the class token first (timm's feature layout, channels and two
    spatial axes, without dropping the token the classifier reads; the config's `pool_size` is
    (1 + H*W, 1)); `forward_head` pools the class token ("token", the default) or the mean of the
    patch tokens ("avg"). Per-stage (B, C, H, W) maps come from `forward_intermediates` and
    `features_only`, listed in `feature_info`.
    """

    def __init__(self, arch: PVTArch, *, locality: LocalitySpec | None = None,
                 num_classes: int = 1000, img_size: int | tuple[int, int] | None = None,
                 drop_path_rate: float = 0.0, in_chans: int = 3, drop_rate: float = 0.0,
                 global_pool: str = "token") -> None:
        super().__init__()
        grids = check_pvt_img_size(arch, img_size)
        depth = pvt_depth(arch)
        selected = locality_blocks(locality, depth)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.arch = arch
        self.num_features = self.embed_dim = arch.embed_dims[-1]
        self.img_size = img_hw(arch.img_size if img_size is None else img_size)
        stages: list[PVTStage] = []
        index, width = 0, in_chans
        feature_info = []
        for s, dim in enumerate(arch.embed_dims):
            blocks = []
            for _ in range(arch.depths[s]):
                # LocalViT-PVT's expansion "mlp_ratio": gamma = this stage's MLP ratio.
                blocks.append(Block(
                    dim, arch.num_heads[s], mlp_ratio=arch.mlp_ratios[s], qkv_bias=arch.qkv_bias,
                    norm_eps=arch.norm_eps, drop_path=rates[index], sr_ratio=arch.sr_ratios[s],
                    locality=locality if index in selected else None,
                ))
                index += 1
            last = s == len(arch.embed_dims) - 1
            stages.append(PVTStage(width, dim, arch.patch_sizes[s], grids[s], int(last), blocks))
            feature_info.append(dict(num_chs=dim, reduction=prod(arch.patch_sizes[: s + 1]),
                                     module=f"stages.{s}"))
            width = dim
        self.stages = nn.ModuleList(stages)
        self.feature_info = feature_info
        self.grids = grids
        self.num_prefix_tokens = [stage.num_prefix_tokens for stage in stages]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.num_features))
        self.norm: nn.Module = nn.LayerNorm(self.num_features, eps=arch.norm_eps)
        self._init_head(num_classes, global_pool, drop_rate, "PVT")
        for stage in self.stages:
            trunc_normal_(stage.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_vit_weights)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            cast(PVTStage, stage).grad_checkpointing = enable

    def _to_map(self, i: int, tokens: torch.Tensor) -> torch.Tensor:
        """Stage i's tokens (B, P + H*W, C) as a (B, C, H, W) map of its patch tokens."""
        tokens = tokens[:, self.num_prefix_tokens[i]:]
        height, width = self.grids[i]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            # Only the stage with a class-token slot (stage 4) takes the class token.
            tokens = stage(x, self.cls_token) if self.num_prefix_tokens[i] > 0 else stage(x)
            if i < last:
                x = self._to_map(i, tokens)  # (B, C, H, W) for the next stage
            else:
                x = self.norm(tokens).transpose(1, 2).unsqueeze(-1)  # (B, C, 1 + H*W, 1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "avg":
            return x[:, :, 1:, 0].mean(dim=2)
        return x[:, :, 0, 0]

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
        stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediates: each selected stage's output as a (B, C, H, W) map (the class
        token left out; `norm` applies the final LayerNorm to stage 4's), and the features."""
        if output_fmt != "NCHW":
            raise ValueError(f"PVT gives its intermediates as NCHW maps, not {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = list(self.stages)[: max_index + 1] if stop_early else list(self.stages)
        intermediates, tokens = [], x
        for i, stage in enumerate(stages):
            tokens = stage(x, self.cls_token) if self.num_prefix_tokens[i] > 0 else stage(x)
            x = self._to_map(i, tokens)
            if i in take:
                normed = norm and self.num_prefix_tokens[i] > 0
                intermediates.append(self._to_map(i, self.norm(tokens)) if normed else x)
        if intermediates_only:
            return intermediates
        return self.norm(tokens).transpose(1, 2).unsqueeze(-1), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of `indices` (and the norm / head)."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


def build_pvt(arch: PVTArch, *, locality: LocalitySpec | None = None, num_classes: int = 1000,
              img_size: int | tuple[int, int] | None = None, drop_path_rate: float = 0.0,
              in_chans: int = 3, drop_rate: float = 0.0, global_pool: str = "token"
              ) -> PyramidVisionTransformer:
    """Build PVT v1 (locality=None) or LocalViT-PVT.

    LocalViT-PVT's spec has `expansion="mlp_ratio"` (each stage's gamma is its MLP ratio, 8, 8,
    4, 4) and `reduction="dim"` (SE hidden = gamma); an integer expansion applies to every stage.
    """
    return PyramidVisionTransformer(
        arch, locality=locality, num_classes=num_classes, img_size=img_size,
        drop_path_rate=drop_path_rate, in_chans=in_chans, drop_rate=drop_rate,
        global_pool=global_pool,
    )
