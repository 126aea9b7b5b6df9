"""Every reach of this package into timm's internals, in one place, checked against timm 1.0.

LocalViT extends timm's DeiT, Swin and TNT instead of forking them, which needs more than timm's
public constructors: the names of a block's sub-modules, the order of operations in its forward
(the locality FFN replaces the MLP half and keeps the attention half), and the arithmetic by which
a timm model derives each block's arguments. Each function here is one such reach, with the timm
code it mirrors named in its docstring. `tests/test_timm_compat.py` checks every one against the
installed timm (each forward half against timm's own forward, each derived argument against the
blocks timm builds), so a timm upgrade that moves one fails there, by name, not as a silently
different model. Importing this module with a timm outside `TESTED_TIMM` warns.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, cast

import timm
import torch
from timm.layers import calculate_drop_path_rates
from timm.models._features import feature_take_indices

# Imported at run time, not only for the type checker: TorchScript resolves these annotations.
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.tnt import Block as TNTBlock
from timm.models.vision_transformer import Block as ViTBlock, VisionTransformer
from torch import nn

__all__ = [
    "SWIN_MLP_BRANCH",
    "SwinBlockHalves",
    "TESTED_TIMM",
    "TNT_MLP_BRANCH",
    "TNTBlockHalves",
    "VIT_MLP_BRANCH",
    "ViTBlockHalves",
    "check_timm_version",
    "feature_take_indices",
    "remove_branch",
    "replace_blocks",
    "swin_block_args",
    "swin_block_attention",
    "tnt_block_args",
    "tnt_block_until_mlp",
    "vit_block_attention",
    "vit_token_grid",
]

# `feature_take_indices(n, indices)` (timm.models._features, not exported by timm.models): the
# (absolute indices, last index) that timm's forward_intermediates take from n feature levels;
# None takes all, an int the last n. The hand-written backbones use it to select as timm does.

# timm major.minor versions whose internals this module was checked against.
TESTED_TIMM = ("1.0",)

# The sub-modules of a timm block that make up its `norm + MLP` half (the locality FFN's place).
VIT_MLP_BRANCH = ("norm2", "mlp", "ls2", "drop_path2")  # timm.models.vision_transformer.Block
SWIN_MLP_BRANCH = ("norm2", "mlp", "drop_path2")        # timm.models.swin_transformer block
TNT_MLP_BRANCH = ("norm_mlp", "mlp")                    # timm.models.tnt.Block (outer MLP)


def check_timm_version(version: str | None = None) -> bool:
    """True if `version` (default: the installed timm) is one this module was checked against;
    otherwise warn, naming the test that checks every reach."""
    version = version or timm.__version__
    ok = ".".join(version.split(".")[:2]) in TESTED_TIMM
    if not ok:
        warnings.warn(
            f"trainers reaches into timm internals checked against timm {', '.join(TESTED_TIMM)}"
            f" but timm {version} is installed; run tests/test_timm_compat.py before trusting "
            f"the DeiT, Swin and TNT variants", RuntimeWarning, stacklevel=2)
    return ok


def remove_branch(block: nn.Module, names: tuple[str, ...]) -> None:
    """Delete the sub-modules `names` (a block's `norm + MLP` half) from a built timm block."""
    for name in names:
        delattr(block, name)


def replace_blocks(blocks: nn.Module, make: Callable[[int, nn.Module], nn.Module | None],
                   start: int = 0) -> int:
    """Replace `blocks[j]` (an nn.Sequential / ModuleList of a timm model) by `make(start + j,
    old)` where that returns a module; returns the index after the last block."""
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        raise TypeError(f"expected timm's blocks as an nn.Sequential or nn.ModuleList but got "
                        f"{type(blocks).__name__}")
    for j, old in enumerate(list(blocks)):
        new = make(start + j, old)
        if new is not None:
            blocks[j] = new
    return start + len(blocks)


# ------------------------------------------------------------------------------------ ViT / DeiT

class ViTBlockHalves(ViTBlock):
    """timm's `vision_transformer.Block` with the attention half of its forward as a method (a
    method, so that TorchScript compiles it with the block; a free function handed the block is
    not scriptable)."""

    def attention_half(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                       is_causal: bool = False) -> torch.Tensor:
        """`x + drop_path1(ls1(attn(norm1(x), attn_mask=..., is_causal=...)))`, as in timm's
        `Block.forward`."""
        return x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask,
                                                      is_causal=is_causal)))


def vit_block_attention(block: ViTBlock, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                        is_causal: bool = False) -> torch.Tensor:
    """The attention half of any timm `vision_transformer.Block`, residual included."""
    return ViTBlockHalves.attention_half(cast(ViTBlockHalves, block), x, attn_mask, is_causal)


def vit_token_grid(model: VisionTransformer) -> tuple[tuple[int, int], int]:
    """(patch grid (H, W), number of prefix tokens) of a timm VisionTransformer."""
    return tuple(model.patch_embed.grid_size), int(model.num_prefix_tokens)


# ------------------------------------------------------------------------------------------ Swin

class SwinBlockHalves(SwinTransformerBlock):
    """timm's `SwinTransformerBlock` with the attention half of its forward as a method."""

    def attention_half(self, x: torch.Tensor) -> torch.Tensor:
        """On NHWC input, residual included: `x + drop_path1(_attn(norm1(x)))` (window
        partition, shift and mask in `_attn`), as in timm's `SwinTransformerBlock.forward`."""
        return x + self.drop_path1(self._attn(self.norm1(x)))


def swin_block_attention(block: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """The attention half of any timm `SwinTransformerBlock`, residual included."""
    return SwinBlockHalves.attention_half(cast(SwinBlockHalves, block), x)


def swin_block_args(*, img_size: tuple[int, int], patch_size: int, embed_dim: int,
                    depths: tuple[int, ...], num_heads: tuple[int, ...], window_size: int,
                    mlp_ratio: float, qkv_bias: bool, drop_path_rate: float
                    ) -> list[dict[str, Any]]:
    """The `SwinTransformerBlock` arguments of every block, in forward order, as
    `SwinTransformer.__init__` and `SwinTransformerStage.__init__` derive them from the model's
    arguments: stage i has width embed_dim * 2^i on the patch grid halved i times (rounding up),
    every second block of a stage is shifted by half a window, drop-path rates are stage-wise."""
    grid = (img_size[0] // patch_size, img_size[1] // patch_size)
    # One list per stage with stagewise=True (timm's return type covers both forms).
    rates = cast("list[list[float]]",
                 calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True))
    out = []
    for i, depth in enumerate(depths):
        scale = 2 ** i
        resolution = ((grid[0] + scale - 1) // scale, (grid[1] + scale - 1) // scale)
        for j in range(depth):
            out.append(dict(
                dim=embed_dim * scale, input_resolution=resolution, num_heads=num_heads[i],
                window_size=(window_size, window_size),
                shift_size=0 if j % 2 == 0 else (window_size // 2, window_size // 2),
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=rates[i][j],
            ))
    return out


# ------------------------------------------------------------------------------------------- TNT

class TNTBlockHalves(TNTBlock):
    """timm's `tnt.Block` with its forward up to the outer MLP as a method."""

    def until_mlp(self, pixel_embed: torch.Tensor, patch_embed: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """timm's `tnt.Block.forward` up to (not including) the outer `norm_mlp + mlp` step: the
        inner transformer, the pixel -> patch projection (legacy or not; the class token
        untouched) and the outer attention with its residual. Returns (pixel_embed,
        patch_embed)."""
        pixel_embed = pixel_embed + self.drop_path(self.attn_in(self.norm_in(pixel_embed)))
        pixel_embed = pixel_embed + self.drop_path(self.mlp_in(self.norm_mlp_in(pixel_embed)))
        batch, n, _ = patch_embed.shape
        if self.norm2_proj is None:  # legacy layout
            pixels = self.proj(self.norm1_proj(pixel_embed).reshape(batch, n - 1, -1))
        else:
            pixels = self.norm2_proj(self.proj(self.norm1_proj(
                pixel_embed.reshape(batch, n - 1, -1))))
        patch_embed = torch.cat([patch_embed[:, :1], patch_embed[:, 1:] + pixels], dim=1)
        patch_embed = patch_embed + self.drop_path(self.attn_out(self.norm_out(patch_embed)))
        return pixel_embed, patch_embed


def tnt_block_until_mlp(block: TNTBlock, pixel_embed: torch.Tensor, patch_embed: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """`TNTBlockHalves.until_mlp` of any timm `tnt.Block`."""
    return TNTBlockHalves.until_mlp(cast(TNTBlockHalves, block), pixel_embed, patch_embed)


def tnt_block_args(*, patch_size: int, first_stride: int, embed_dim: int, inner_dim: int,
                   depth: int, num_heads_inner: int, num_heads_outer: int, mlp_ratio: float,
                   qkv_bias: bool, drop_path_rate: float, legacy: bool) -> list[dict[str, Any]]:
    """The `tnt.Block` arguments of every block as `TNT.__init__` derives them: each patch holds
    ceil(patch / first_stride)^2 pixel tokens, drop-path rates rise linearly over the blocks."""
    num_pixel = math.ceil(patch_size / first_stride) ** 2
    rates = calculate_drop_path_rates(drop_path_rate, depth)
    return [dict(dim=inner_dim, dim_out=embed_dim, num_pixel=num_pixel,
                 num_heads_in=num_heads_inner, num_heads_out=num_heads_outer,
                 mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=rates[i], legacy=legacy)
            for i in range(depth)]


check_timm_version()
