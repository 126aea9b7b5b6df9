"""DeiT / ViT with the locality FFN in selected blocks (LocalViT-T / -S, paper section 3, table 5).

Built on timm's `VisionTransformer`: the model passes a block factory to timm's `block_fn` hook, so
every block that does not get locality is timm's own `Block`, and those that do are `LocalityBlock`,
a `Block` whose `norm2 + mlp` is replaced by `LocalityFeedForward` (no LayerNorm before it;
drop-path on the attention branch only). The token grid comes from the patch embedding, so
non-square inputs work; the class token bypasses the FFN.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from .. import _timm_compat as compat
from ..errors import ModelConfigError
from ..locality import LocalityFeedForward, LocalitySpec
from ._common import check_patch_grid, img_hw, locality_blocks

__all__ = ["LocalVisionTransformer", "LocalityBlock", "ViTArch", "build_deit", "check_img_size",
           "num_blocks"]


@dataclass(frozen=True)
class ViTArch:
    """A ViT/DeiT size. DeiT-T: dim 192, 12 blocks, 3 heads; DeiT-S: 384, 12, 6 (DeiT table 1)."""

    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ModelConfigError(
                f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}"
            )


class LocalityBlock(compat.ViTBlockHalves):
    """timm's pre-norm ViT block with `norm2 + mlp` replaced by the locality FFN.

    `grid` (H, W) and `num_prefix_tokens` are set by the owning model from its patch embedding.
    """

    def __init__(self, dim: int, num_heads: int, *, locality: LocalitySpec,
                 mlp_ratio: float = 4.0, **kwargs: Any) -> None:
        super().__init__(dim, num_heads, mlp_ratio=mlp_ratio, **kwargs)
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        # The locality FFN has its own residual and BatchNorms; LayerNorm, layer-scale and
        # drop-path of the MLP branch go away (drop-path stays on the attention branch).
        compat.remove_branch(self, compat.VIT_MLP_BRANCH)
        self.ffn = LocalityFeedForward(dim, locality, mlp_ratio=mlp_ratio, **dd)
        self.grid: tuple[int, int] | None = None
        self.num_prefix_tokens = 1

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        grid = self.grid
        assert grid is not None, "LocalityBlock.grid is set by its model before use"
        x = self.attention_half(x, attn_mask, is_causal)
        return self.ffn(x, grid, self.num_prefix_tokens)


def _block_factory(*, depth: int, locality_at: frozenset[int], spec: LocalitySpec | None,
                   **kwargs: Any) -> nn.Module:
    # timm calls block_fn(..., depth=i) for block i in forward order.
    if depth in locality_at:
        assert spec is not None, "locality_at needs a locality spec"
        return LocalityBlock(locality=spec, depth=depth, **kwargs)
    return Block(depth=depth, **kwargs)


class LocalVisionTransformer(VisionTransformer):
    """timm's VisionTransformer whose blocks listed in `locality_at` (0-based) are
    LocalityBlocks."""

    def __init__(self, *, locality: LocalitySpec | None = None,
                 locality_at: frozenset[int] = frozenset(), **kwargs: Any) -> None:
        if locality_at and kwargs.get("dynamic_img_size"):
            raise ModelConfigError("the locality FFN needs a fixed token grid; "
                                   "dynamic_img_size is not supported with locality")
        block_fn = partial(_block_factory, locality_at=frozenset(locality_at), spec=locality)
        # timm annotates block_fn as a class but only calls it: a factory works (and is tested).
        super().__init__(block_fn=block_fn, **kwargs)  # type: ignore[arg-type]
        self._sync_grid()

    def _sync_grid(self) -> None:
        grid, num_prefix_tokens = compat.vit_token_grid(self)
        for block in self.blocks:
            if isinstance(block, LocalityBlock):
                block.grid = grid
                block.num_prefix_tokens = num_prefix_tokens

    def set_input_size(self, img_size=None, patch_size=None) -> None:
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        self._sync_grid()


def num_blocks(arch: ViTArch) -> int:
    return arch.depth


def check_img_size(arch: ViTArch, img_size: int | tuple[int, int]) -> None:
    check_patch_grid(img_size, arch.patch_size)


def build_deit(arch: ViTArch, *, locality: LocalitySpec | None, num_classes: int = 1000,
               img_size: int | tuple[int, int] = 224, drop_path_rate: float = 0.0,
               in_chans: int = 3, drop_rate: float = 0.0,
               global_pool: str = "token") -> LocalVisionTransformer:
    check_img_size(arch, img_size)
    return LocalVisionTransformer(
        locality=locality,
        locality_at=locality_blocks(locality, arch.depth),
        img_size=img_hw(img_size),
        patch_size=arch.patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        qkv_bias=arch.qkv_bias,
        drop_path_rate=drop_path_rate,
        drop_rate=drop_rate,
        global_pool=global_pool,
    )
