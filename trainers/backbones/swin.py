"""Swin Transformer with the locality FFN in selected blocks (LocalViT-Swin, paper section 3).

timm's `SwinTransformer` is built as is; each selected block (1-based, counted over all stages in
forward order) is built anew from the arguments timm derives from the model's
(`_timm_compat.swin_block_args`) as `LocalitySwinBlock`, a `SwinTransformerBlock` whose
`norm2 + mlp` is replaced by `LocalityFeedForward` on the block's own (H, W) grid. Window
attention, shifts and patch merging are timm's, unchanged. Swin has no class token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from .. import _timm_compat as compat
from ..errors import ModelConfigError
from ..locality import LocalityFeedForward, LocalitySpec
from ._common import check_patch_grid, img_hw, init_vit_weights, locality_blocks

__all__ = ["LocalSwinTransformer", "LocalitySwinBlock", "SwinArch", "build_swin", "check_img_size",
           "feature_levels", "num_blocks"]


@dataclass(frozen=True)
class SwinArch:
    """A Swin size. Swin-T: patch 4, dim 96, depths 2-2-6-2, heads 3-6-12-24, window 7 (Swin
    table 1)."""

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
        if any(w % h for w, h in zip(widths, self.num_heads, strict=True)):
            raise ModelConfigError(
                f"Swin stage widths {widths} must be divisible by num_heads {self.num_heads}"
            )


class LocalitySwinBlock(compat.SwinBlockHalves):
    """timm's Swin block with `norm2 + mlp` replaced by the locality FFN (NHWC in, NHWC out)."""

    def __init__(self, *, locality: LocalitySpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        compat.remove_branch(self, compat.SWIN_MLP_BRANCH)
        self.ffn = LocalityFeedForward(kwargs["dim"], locality,
                                       mlp_ratio=kwargs.get("mlp_ratio", 4.0),
                                       device=kwargs.get("device"), dtype=kwargs.get("dtype"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        x = self.attention_half(x)
        x = self.ffn(x.reshape(batch, height * width, channels), (height, width), 0)
        return x.reshape(batch, height, width, channels)


class LocalSwinTransformer(SwinTransformer):
    """timm's SwinTransformer whose feature levels (`feature_info`, `forward_intermediates`,
    `features_only`) are its stages, as timm's; a Swin of fewer than three stages (the micro
    variants) lists its patch embedding (stride = patch size) first, so it offers the three
    levels timm's feature API expects of a hierarchical model without a different network."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stem_level = len(self.layers) < 3
        if self.stem_level:
            self.feature_info.insert(0, dict(num_chs=self.embed_dim, module="patch_embed",
                                             reduction=kwargs["patch_size"]))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
        stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's Swin intermediates (NCHW maps; `norm` applies the final norm to the last
        stage's), over the feature levels of `feature_info`."""
        if not self.stem_level:
            return super().forward_intermediates(x, indices, norm, stop_early, output_fmt,
                                                 intermediates_only)
        if output_fmt != "NCHW":
            raise ValueError(f"Swin gives its intermediates as NCHW maps, not {output_fmt!r}")
        take, max_index = compat.feature_take_indices(len(self.feature_info), indices)
        x = self.patch_embed(x)  # NHWC
        intermediates = [x.permute(0, 3, 1, 2).contiguous()] if 0 in take else []
        last = len(self.layers) - 1
        stages = list(self.layers)[:max_index] if stop_early else list(self.layers)
        i = -1
        for i, stage in enumerate(stages):
            x = stage(x)
            if i + 1 in take:  # level i + 1 is stage i
                y = self.norm(x) if norm and i == last else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous())
        if intermediates_only:
            return intermediates
        return (self.norm(x) if i == last else x), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's pruning, over the feature levels of `feature_info`."""
        if not self.stem_level:
            return super().prune_intermediate_layers(indices, prune_norm, prune_head)
        take, max_index = compat.feature_take_indices(len(self.feature_info), indices)
        # Keep the stages up to the last level taken (stage 0 also when only the stem is). With
        # at most two stages timm's pruning can only end at stage 0, whose width it reads from
        # feature_info[0]: the stem's entry here, of the same width (embed_dim).
        super().prune_intermediate_layers([max(max_index - 1, 0)], prune_norm, prune_head)
        return take


def feature_levels(arch: SwinArch) -> int:
    """The feature levels of `LocalSwinTransformer` (its stages, and the stem below three)."""
    return len(arch.depths) + (1 if len(arch.depths) < 3 else 0)


def num_blocks(arch: SwinArch) -> int:
    return sum(arch.depths)


def check_img_size(arch: SwinArch, img_size: int | tuple[int, int]) -> None:
    check_patch_grid(img_size, arch.patch_size)


def build_swin(arch: SwinArch, *, locality: LocalitySpec | None, num_classes: int = 1000,
               img_size: int | tuple[int, int] = 224, drop_path_rate: float = 0.0,
               in_chans: int = 3, drop_rate: float = 0.0,
               global_pool: str = "avg") -> LocalSwinTransformer:
    check_img_size(arch, img_size)
    size = img_hw(img_size)
    model = LocalSwinTransformer(
        img_size=size, patch_size=arch.patch_size, in_chans=in_chans,
        num_classes=num_classes, embed_dim=arch.embed_dim, depths=arch.depths,
        num_heads=arch.num_heads, window_size=arch.window_size, mlp_ratio=arch.mlp_ratio,
        qkv_bias=arch.qkv_bias, drop_path_rate=drop_path_rate, drop_rate=drop_rate,
        global_pool=global_pool,
    )
    selected = locality_blocks(locality, num_blocks(arch))
    if locality is None or not selected:  # (no locality selects no block)
        return model
    # The selected blocks are built from the builder's own arguments, as timm derives them.
    args = compat.swin_block_args(
        img_size=size, patch_size=arch.patch_size, embed_dim=arch.embed_dim, depths=arch.depths,
        num_heads=arch.num_heads, window_size=arch.window_size, mlp_ratio=arch.mlp_ratio,
        qkv_bias=arch.qkv_bias, drop_path_rate=drop_path_rate,
    )

    def make(index: int, old: nn.Module) -> nn.Module | None:
        if index not in selected:
            return None
        new = LocalitySwinBlock(locality=locality, **args[index])
        new.apply(init_vit_weights)  # the ViT init SwinTransformer gives every other block
        return new

    index = 0
    for stage in model.layers:
        index = compat.replace_blocks(stage.get_submodule("blocks"), make, index)
    return model
