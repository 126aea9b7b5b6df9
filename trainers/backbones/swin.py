"""Swin Transformer with the locality FFN in selected blocks (LocalViT-Swin, paper section 3).

timm's `SwinTransformer` is built as is; each selected block (1-based, counted over all stages in
forward order) is rebuilt as `LocalitySwinBlock`, a `SwinTransformerBlock` whose `norm2 + mlp`
is replaced by `LocalityFeedForward` on the block's own (H, W) grid. Window attention, shifts and
patch merging are timm's, unchanged. Swin has no class token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from functools import partial

import torch
from timm.layers import DropPath
from timm.models._manipulate import named_apply
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
from timm.models.vision_transformer import init_weights_vit_timm

from ..config import ModelConfigError
from ..locality import LocalityFeedForward, LocalitySpec
from ._common import check_patch_grid, img_hw, locality_blocks

__all__ = ["LocalitySwinBlock", "SwinArch", "build_swin", "check_img_size", "num_blocks"]


@dataclass(frozen=True)
class SwinArch:
    """A Swin size. Swin-T: patch 4, dim 96, depths 2-2-6-2, heads 3-6-12-24, window 7 (Swin table 1)."""

    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.num_heads):
            raise ModelConfigError(
                f"Swin depths {self.depths} and num_heads {self.num_heads} must have one entry "
                "per stage"
            )
        widths = [self.embed_dim * 2**i for i in range(len(self.depths))]
        if any(w % h for w, h in zip(widths, self.num_heads)):
            raise ModelConfigError(
                f"Swin stage widths {widths} must be divisible by num_heads {self.num_heads}"
            )


class LocalitySwinBlock(SwinTransformerBlock):
    """timm's Swin block with `norm2 + mlp` replaced by the locality FFN (NHWC in, NHWC out)."""

    def __init__(self, *, locality: LocalitySpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        del self.norm2, self.mlp, self.drop_path2
        self.ffn = LocalityFeedForward(self.dim, locality, device=kwargs.get("device"),
                                       dtype=kwargs.get("dtype"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = self.ffn(x.reshape(batch, height * width, channels), (height, width), 0)
        return x.reshape(batch, height, width, channels)


def _block_kwargs(block: SwinTransformerBlock) -> dict[str, Any]:
    """The constructor arguments that rebuild `block` (the attention's own settings included)."""
    attn = block.attn
    drop = block.drop_path1.drop_prob if isinstance(block.drop_path1, DropPath) else 0.0
    return dict(
        dim=block.dim,
        input_resolution=block.input_resolution,
        num_heads=attn.num_heads,
        head_dim=attn.qkv.out_features // 3 // attn.num_heads,
        window_size=block.window_size,
        shift_size=block.target_shift_size,
        always_partition=block.always_partition,
        dynamic_mask=block.dynamic_mask,
        mlp_ratio=block.mlp_ratio,
        qkv_bias=attn.qkv.bias is not None,
        drop_path=drop,
    )


def num_blocks(arch: SwinArch) -> int:
    return sum(arch.depths)


def check_img_size(arch: SwinArch, img_size: int | tuple[int, int]) -> None:
    check_patch_grid(img_size, arch.patch_size)


def build_swin(arch: SwinArch, *, locality: LocalitySpec | None, num_classes: int = 1000,
               img_size: int | tuple[int, int] = 224, drop_path_rate: float = 0.0,
               in_chans: int = 3) -> SwinTransformer:
    check_img_size(arch, img_size)
    model = SwinTransformer(
        img_size=img_hw(img_size), patch_size=arch.patch_size, in_chans=in_chans,
        num_classes=num_classes, embed_dim=arch.embed_dim, depths=arch.depths,
        num_heads=arch.num_heads, window_size=arch.window_size, mlp_ratio=arch.mlp_ratio,
        qkv_bias=arch.qkv_bias, drop_path_rate=drop_path_rate,
    )
    selected = locality_blocks(locality, num_blocks(arch))
    index = 0
    for stage in model.layers:
        for j, block in enumerate(stage.blocks):
            if index in selected:
                new = LocalitySwinBlock(locality=locality, **_block_kwargs(block))
                # timm's ViT-style init, as SwinTransformer.init_weights gives every other block.
                named_apply(partial(init_weights_vit_timm, needs_reset=False), new)
                stage.blocks[j] = new
            index += 1
    return model
