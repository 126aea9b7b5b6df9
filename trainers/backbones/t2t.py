"""Tokens-to-Token ViT (Yuan et al., ICCV 2021) with Performer token layers and optional locality.

The T2T module soft-splits the image into overlapping patches (nn.Unfold), re-structures the
tokens with a Performer token layer (one head, positive random-feature attention with a frozen
orthogonal projection), folds them back to their grid and soft-splits again; a Linear projects
the last split to the backbone width. The backbone is a plain ViT with a class token and a frozen
sinusoid position embedding, its blocks `_blocks.Block` (shared with PVT v1; multi-head attention
with separate q and kv projections, the same parameters as a fused qkv). timm has no T2T-ViT, so
it is written here; T2T-ViT-7 matches the authors' model to the last parameter (docs/paper.md
section 3).

LocalViT-T2T (Li et al., arXiv 2104.05707) swaps the backbone blocks' `norm2 + MLP` for the
locality FFN (gamma 2, hs+se, SE hidden 4) and each token layer's `norm2 + MLP` for a gamma-1
h-swish locality FFN on the token grid (56x56, then 28x28 at 224 px). The authors' code keeps the
then unused LayerNorm(64) in both token layers (256 parameters that receive no gradient); this
module does not create it, so LocalViT-T2T-7 has 256 fewer parameters than theirs.

The fixed random projection and sinusoid position embedding are never trained. The authors' code
holds them as parameters without gradients; here they are buffers (as timm keeps fixed tensors),
listed in each module's `fixed_tensors`, so `trainers.profile.count_params` still counts them as
the authors do and `count_trainable_params` gives the paper's count.

timm's model interface: `forward_features` gives the normalised tokens (B, 1 + N, C), the class
token first; `forward_head` pools the class token ("token", the default) or the mean of the patch
tokens ("avg"); `forward_intermediates` gives each block's patch tokens as (B, C, H, W) maps on
the backbone grid, listed in `feature_info`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING

import torch
from timm.layers import Mlp, trunc_normal_
from timm.models import register_notrace_function
from torch import nn
from torch.utils.checkpoint import checkpoint

from .._timm_compat import feature_take_indices
from ..errors import ModelConfigError
from ..locality import LocalityFeedForward, LocalitySpec
from ._blocks import Block
from ._common import (
    ClassTokenClassifier,
    check_size,
    img_hw,
    init_vit_weights,
    locality_blocks,
    register_fixed,
)

__all__ = [
    "PerformerTokenLayer",
    "T2TArch",
    "T2T_ARCHS",
    "T2TViT",
    "TokensToToken",
    "build_t2t",
    "check_t2t_img_size",
    "performer_attention",
    "sinusoid_position_embedding",
    "t2t_depth",
]


@dataclass(frozen=True)
class T2TArch:
    """One T2T-ViT size. `soft_splits` are (kernel, stride, padding) of each nn.Unfold, in order;
    a Performer token layer sits between consecutive splits."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    token_dim: int = 64
    kernel_ratio: float = 0.5  # random features m = token_dim * kernel_ratio
    soft_splits: tuple[tuple[int, int, int], ...] = ((7, 4, 2), (3, 2, 1), (3, 2, 1))
    qkv_bias: bool = False
    norm_eps: float = 1e-5
    token_drop: float = 0.1  # the authors' fixed dropout inside the Performer token layers
    img_size: int = 224

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ModelConfigError(
                f"T2T embed_dim must be divisible by num_heads but got {self.embed_dim} and "
                f"{self.num_heads}"
            )
        if len(self.soft_splits) < 2 or any(
            len(s) != 3 or s[0] < 1 or s[1] < 1 or s[2] < 0 for s in self.soft_splits
        ):
            raise ModelConfigError(
                "T2T soft_splits must be at least two (kernel>=1, stride>=1, padding>=0) triples "
                f"but got {self.soft_splits!r}"
            )
        if int(self.token_dim * self.kernel_ratio) < 1:
            raise ModelConfigError(
                f"T2T token_dim * kernel_ratio must give at least one random feature but got "
                f"{self.token_dim} * {self.kernel_ratio}"
            )


T2T_ARCHS: dict[str, T2TArch] = {
    # T2T-ViT-7, Yuan et al. 2021 Table 1 (Performer token layers, the authors' `T2t_vit_7`).
    "t2t_vit_7": T2TArch(embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0),
    # CPU smoke size: gentler splits so 8-32 px inputs keep a useful grid (32 px -> 16, 8, 8x8).
    "t2t_vit_micro": T2TArch(
        embed_dim=64, depth=4, num_heads=2, mlp_ratio=2.0, token_dim=32,
        soft_splits=((3, 2, 1), (3, 2, 1), (3, 1, 1)), img_size=32,
    ),
}


def t2t_depth(arch: T2TArch) -> int:
    """Backbone blocks (the range of `locality.layers`); token layers use `token_locality`."""
    return arch.depth


def check_t2t_img_size(arch: T2TArch, img_size: int | tuple[int, int] | None
                       ) -> list[tuple[int, int]]:
    """Token grid after every soft split; ModelConfigError if a split would leave no tokens."""
    size = img_hw(arch.img_size if img_size is None else img_size)
    grids = list(zip(_sides(arch, size[0]), _sides(arch, size[1]), strict=True))
    if min(min(grid) for grid in grids) < 1:
        min_side = next(s for s in range(1, 1 << 16) if min(_sides(arch, s)) >= 1)
        raise ModelConfigError(
            f"T2T-ViT soft splits {arch.soft_splits} leave no tokens for a {size[0]}x{size[1]} "
            f"image; use at least {min_side} px per side (default {arch.img_size})"
        )
    return grids


def _sides(arch: T2TArch, side: int) -> list[int]:
    """Grid side after each soft split (nn.Unfold arithmetic)."""
    sides = []
    for kernel, stride, padding in arch.soft_splits:
        side = (side + 2 * padding - kernel) // stride + 1
        sides.append(side)
    return sides


def sinusoid_position_embedding(n_positions: int, dim: int) -> torch.Tensor:
    """(1, n_positions, dim): sin on even channels, cos on odd, wavelengths 10000^(2i/dim)."""
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim
    angle = position / torch.pow(10000.0, exponent)[None, :]  # (N, D)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float().unsqueeze(0)


def _feature_map(x: torch.Tensor, random_features: torch.Tensor) -> torch.Tensor:
    """Positive random features of the softmax kernel: exp(w.x - |x|^2 / 2) / sqrt(m)."""
    half_norm = (x * x).sum(dim=-1, keepdim=True) / 2  # (B, T, 1)
    m = random_features.shape[0]
    return torch.exp(x @ random_features.t() - half_norm) / math.sqrt(m)


def _performer_fp32(k: torch.Tensor, q: torch.Tensor, v: torch.Tensor,
                    random_features: torch.Tensor) -> torch.Tensor:
    kf, qf, vf = k.float(), q.float(), v.float()
    kp, qp = _feature_map(kf, random_features), _feature_map(qf, random_features)  # (B, T, m)
    normaliser = qp @ kp.sum(dim=1).unsqueeze(-1)  # (B, T, 1)
    context = vf.transpose(1, 2) @ kp  # (B, dim, m)
    return (qp @ context.transpose(1, 2)) / (normaliser + 1e-8)  # (B, T, dim)


@register_notrace_function  # a leaf under torch.fx: autocast needs the concrete device
def performer_attention(k: torch.Tensor, q: torch.Tensor, v: torch.Tensor,
                        random_features: torch.Tensor) -> torch.Tensor:
    """Single-head Performer attention of (B, T, dim) keys, queries and values, in fp32."""
    if not torch.jit.is_scripting():
        # exp() of fp16 logits overflows; the kernel runs in fp32 even under autocast.
        with torch.autocast(device_type=k.device.type, enabled=False):
            return _performer_fp32(k, q, v, random_features)
    return _performer_fp32(k, q, v, random_features)


class PerformerTokenLayer(nn.Module):
    """LayerNorm -> single-head Performer attention (skip from v) -> LN + MLP or locality FFN."""

    def __init__(self, in_dim: int, dim: int, kernel_ratio: float, drop: float,
                 locality: LocalitySpec | None) -> None:
        super().__init__()
        self.dim = dim
        self.norm1 = nn.LayerNorm(in_dim)
        self.kqv = nn.Linear(in_dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        self.num_features = int(dim * kernel_ratio)
        projection = nn.init.orthogonal_(torch.empty(self.num_features, dim))
        register_fixed(self, "random_features", projection * math.sqrt(self.num_features))
        self.locality = locality is not None
        if locality is not None:
            self.ffn = LocalityFeedForward(dim, locality, mlp_ratio=1)
        else:
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, dim, drop=(0.0, drop))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(x).split(self.dim, dim=-1)  # each (B, T, dim)
        y = performer_attention(k, q, v, self.random_features)
        return v + self.proj_drop(self.proj(y.to(v.dtype)))

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.attention(self.norm1(x))
        if hasattr(self, "ffn"):  # locality on (hasattr is static under TorchScript)
            return self.ffn(x, grid, 0)
        return x + self.mlp(self.norm2(x))


class TokensToToken(nn.Module):
    """Soft split -> token layer -> ... -> soft split -> Linear: image to (B, N, embed_dim)."""

    def __init__(self, arch: T2TArch, in_chans: int, grids: list[tuple[int, int]],
                 locality: LocalitySpec | None) -> None:
        super().__init__()
        n_layers = len(arch.soft_splits) - 1
        selected = locality_blocks(locality, n_layers)
        self.splits = nn.ModuleList(
            nn.Unfold(kernel_size=k, stride=s, padding=p) for k, s, p in arch.soft_splits
        )
        layers, width = [], in_chans
        for i in range(n_layers):
            kernel = arch.soft_splits[i][0]
            layers.append(PerformerTokenLayer(
                width * kernel * kernel, arch.token_dim, arch.kernel_ratio, arch.token_drop,
                locality if i in selected else None,
            ))
            width = arch.token_dim
        self.layers = nn.ModuleList(layers)
        last_kernel = arch.soft_splits[-1][0]
        self.project = nn.Linear(arch.token_dim * last_kernel * last_kernel, arch.embed_dim)
        self.grids = grids

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        x = self.splits[0](x).transpose(1, 2)  # (B, H1*W1, C*k*k)
        # Layer i runs on the grid of split i and is followed by split i + 1 (indexed loops over
        # module lists are not TorchScript, so each layer is matched to its split by position).
        for i, layer in enumerate(self.layers):
            grid = self.grids[i]
            x = layer(x, grid)  # (B, H*W, token_dim)
            x = x.transpose(1, 2).reshape(batch, -1, grid[0], grid[1])  # (B, token_dim, H, W)
            for j, split in enumerate(self.splits):
                if j == i + 1:
                    x = split(x)
            x = x.transpose(1, 2)
        return self.project(x)


class T2TViT(ClassTokenClassifier, nn.Module):
    """T2T-ViT classifier reading the class token."""

    if TYPE_CHECKING:  # a buffer, declared for the type checker only (TorchScript reads class
        pos_embed: torch.Tensor  # annotations as attribute types)

    def __init__(self, arch: T2TArch, *, locality: LocalitySpec | None = None,
                 token_locality: LocalitySpec | None = None, num_classes: int = 1000,
                 img_size: int | tuple[int, int] | None = None, drop_path_rate: float = 0.0,
                 in_chans: int = 3, drop_rate: float = 0.0, global_pool: str = "token") -> None:
        super().__init__()
        grids = check_t2t_img_size(arch, img_size)
        self.arch = arch
        self.num_features = self.embed_dim = arch.embed_dim
        self.img_size = img_hw(arch.img_size if img_size is None else img_size)
        self.grid = grids[-1]
        self.tokens_to_token = TokensToToken(arch, in_chans, grids[:-1], token_locality)
        n_tokens = self.grid[0] * self.grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, arch.embed_dim))
        register_fixed(self, "pos_embed", sinusoid_position_embedding(n_tokens + 1, arch.embed_dim))
        selected = locality_blocks(locality, arch.depth)
        rates = torch.linspace(0, drop_path_rate, arch.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(arch.embed_dim, arch.num_heads, mlp_ratio=arch.mlp_ratio,
                  qkv_bias=arch.qkv_bias, norm_eps=arch.norm_eps, drop_path=rates[i],
                  locality=locality if i in selected else None)
            for i in range(arch.depth)
        )
        self.norm: nn.Module = nn.LayerNorm(arch.embed_dim, eps=arch.norm_eps)
        self._init_head(num_classes, global_pool, drop_rate, "T2T-ViT")
        # Every block sees the backbone grid: the total stride of the soft splits.
        stride = prod(split[1] for split in arch.soft_splits)
        self.feature_info = [dict(num_chs=arch.embed_dim, reduction=stride, module=f"blocks.{i}")
                             for i in range(arch.depth)]
        self.grad_checkpointing = False
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_vit_weights)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        check_size(x.shape[2], x.shape[3], self.img_size, "the input")
        x = self.tokens_to_token(x)  # (B, N, D)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embed(x)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, self.grid, 1, use_reentrant=False)
            else:
                x = block(x, self.grid, 1)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
        stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediates: the selected blocks' patch tokens (the class token left out) as
        (B, C, H, W) maps ("NCHW") or (B, H*W, C) ("NLC"), `norm` applying the final LayerNorm;
        and the features."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC' but got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = list(self.blocks)[: max_index + 1] if stop_early else list(self.blocks)
        x = self._embed(x)
        intermediates = []
        for i, block in enumerate(blocks):
            x = block(x, self.grid, 1)
            if i in take:
                y = (self.norm(x) if norm else x)[:, 1:]
                if output_fmt == "NCHW":
                    y = y.transpose(1, 2).reshape(y.shape[0], -1, self.grid[0], self.grid[1])
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last of `indices` (and the norm / head)."""
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


def build_t2t(arch: T2TArch, *, locality: LocalitySpec | None = None,
              token_locality: LocalitySpec | None = None, num_classes: int = 1000,
              img_size: int | tuple[int, int] | None = None, drop_path_rate: float = 0.0,
              in_chans: int = 3, drop_rate: float = 0.0, global_pool: str = "token") -> T2TViT:
    """Build T2T-ViT (both localities None) or LocalViT-T2T.

    `locality` governs the backbone blocks (its `layers` range over `t2t_depth(arch)` blocks);
    `token_locality` the Performer token layers (its `layers` range over those layers).
    """
    return T2TViT(arch, locality=locality, token_locality=token_locality,
                  num_classes=num_classes, img_size=img_size, drop_path_rate=drop_path_rate,
                  in_chans=in_chans, drop_rate=drop_rate, global_pool=global_pool)
