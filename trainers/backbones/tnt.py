"""Transformer-in-Transformer with the locality FFN in selected outer blocks (LocalViT-TNT).

timm's `TNT` with its legacy layout (pixel embedding conv on the whole image, per-block
`LayerNorm(inner_dim)` + biased projection) is the layout of the TNT the LocalViT authors build
on, and gives TNT-T's published 6.1 M parameters. Each selected block (1-based over the 12 blocks)
is built anew from the model's arguments as `LocalityTNTBlock`: the inner transformer keeps its
GELU MLP, the outer `norm_mlp + mlp` becomes `LocalityFeedForward` on the patch grid; the class
token bypasses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.models.tnt import TNT
from torch import nn

from .. import _timm_compat as compat
from ..errors import ModelConfigError
from ..locality import LocalityFeedForward, LocalitySpec
from ._common import check_patch_grid, img_hw, init_vit_weights, locality_blocks

__all__ = ["LocalityTNTBlock", "LocalTNT", "TNTArch", "build_tnt", "check_img_size", "num_blocks"]


@dataclass(frozen=True)
class TNTArch:
    """A TNT size. TNT-T (LocalViT table 5): patch 16, outer dim 192, inner dim 12, 12 blocks,
    3 outer and 3 inner heads, no qkv bias, legacy layout."""

    patch_size: int = 16
    embed_dim: int = 192
    inner_dim: int = 12
    depth: int = 12
    num_heads_outer: int = 3
    num_heads_inner: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    first_stride: int = 4

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads_outer or self.inner_dim % self.num_heads_inner:
            raise ModelConfigError(
                f"TNT embed_dim {self.embed_dim} / inner_dim {self.inner_dim} must be divisible "
                f"by num_heads_outer {self.num_heads_outer} / num_heads_inner "
                f"{self.num_heads_inner}"
            )


class LocalityTNTBlock(compat.TNTBlockHalves):
    """timm's TNT block whose outer `norm_mlp + mlp` is the locality FFN."""

    def __init__(self, *, locality: LocalitySpec, grid: tuple[int, int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        compat.remove_branch(self, compat.TNT_MLP_BRANCH)
        self.ffn = LocalityFeedForward(kwargs["dim_out"], locality,
                                       mlp_ratio=kwargs.get("mlp_ratio", 4.0),
                                       device=kwargs.get("device"), dtype=kwargs.get("dtype"))
        self.grid = grid

    def forward(self, pixel_embed: torch.Tensor, patch_embed: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        # Inner transformer, projection and outer attention as timm; then the locality FFN in
        # place of the outer MLP (drop-path on attention only, the class token bypasses it).
        pixel_embed, patch_embed = self.until_mlp(pixel_embed, patch_embed)
        return pixel_embed, self.ffn(patch_embed, self.grid, 1)


class LocalTNT(TNT):
    """timm's TNT with the blocks in `locality_at` (0-based) built as LocalityTNTBlocks."""

    def __init__(self, *, locality: LocalitySpec | None = None,
                 locality_at: frozenset[int] = frozenset(), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not locality_at:
            return
        assert locality is not None, "locality_at needs a locality spec"
        # The selected blocks are built from the model's own arguments, as timm derives them.
        args = compat.tnt_block_args(**{k: kwargs[k] for k in (
            "patch_size", "first_stride", "embed_dim", "inner_dim", "depth", "num_heads_inner",
            "num_heads_outer", "mlp_ratio", "qkv_bias", "drop_path_rate", "legacy")})
        height, width = kwargs["img_size"]
        grid = (height // kwargs["patch_size"], width // kwargs["patch_size"])

        def make(index: int, old: nn.Module) -> nn.Module | None:
            if index not in locality_at:
                return None
            new = LocalityTNTBlock(locality=locality, grid=grid, **args[index])
            new.apply(init_vit_weights)  # TNT's own init: Linear trunc-normal, LayerNorm 1/0
            return new

        compat.replace_blocks(self.blocks, make)


def num_blocks(arch: TNTArch) -> int:
    return arch.depth


def check_img_size(arch: TNTArch, img_size: int | tuple[int, int]) -> None:
    check_patch_grid(img_size, arch.patch_size)
    if arch.patch_size % arch.first_stride:
        raise ModelConfigError(
            f"patch_size {arch.patch_size} must be a multiple of first_stride {arch.first_stride} "
            "(each patch holds (patch/stride)^2 pixel tokens)"
        )


def build_tnt(arch: TNTArch, *, locality: LocalitySpec | None, num_classes: int = 1000,
              img_size: int | tuple[int, int] = 224, drop_path_rate: float = 0.0,
              in_chans: int = 3, drop_rate: float = 0.0,
              global_pool: str = "token") -> LocalTNT:
    check_img_size(arch, img_size)
    return LocalTNT(
        locality=locality,
        locality_at=locality_blocks(locality, arch.depth),
        img_size=img_hw(img_size), patch_size=arch.patch_size, in_chans=in_chans,
        num_classes=num_classes, embed_dim=arch.embed_dim, inner_dim=arch.inner_dim,
        depth=arch.depth, num_heads_inner=arch.num_heads_inner,
        num_heads_outer=arch.num_heads_outer, mlp_ratio=arch.mlp_ratio, qkv_bias=arch.qkv_bias,
        drop_path_rate=drop_path_rate, first_stride=arch.first_stride, legacy=True,
        drop_rate=drop_rate, global_pool=global_pool,
    )
