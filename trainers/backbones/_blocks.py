"""The transformer block of the hand-written backbones, PVT v1 and T2T-ViT (one implementation).

Pre-norm: `x + drop_path(attn(norm1(x)))`, then either the GELU MLP with its LayerNorm
(`x + drop_path(mlp(norm2(x)))`) or, in LocalViT, the locality FFN in place of `norm2 + mlp`
(its own residual, no LayerNorm before it, no drop-path: LocalViT applies stochastic depth to the
attention branch only). The attention is multi-head attention whose keys and values may come
from the token grid shrunk by `sr_ratio` (PVT v1's spatial reduction; T2T-ViT uses ratio 1, plain
multi-head attention). Token grids are passed explicitly, never guessed from the token count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, use_fused_attn
from torch import nn

from ..locality import LocalityFeedForward, LocalitySpec

__all__ = ["Block", "SpatialReductionAttention"]


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys / values come from the grid shrunk by `sr_ratio`.

    q Linear(dim, dim), kv Linear(dim, 2 dim) (bias = qkv_bias), proj Linear(dim, dim); where the
    ratio is > 1 the keys and values are read from Conv2d(k = s = ratio) + LayerNorm of the grid.
    Prefix tokens (the class token) attend and are attended to unreduced.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, sr_ratio: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        # timm's switch: F.scaled_dot_product_attention or explicit matmuls (same maths).
        self.fused_attn = use_fused_attn()
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0
                ) -> torch.Tensor:
        batch, n, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).reshape(batch, n, self.num_heads, head_dim).transpose(1, 2)  # (B, h, N, d)
        source = x
        if hasattr(self, "sr"):  # sr_ratio > 1 (hasattr is static under TorchScript)
            prefix, tokens = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
            img = tokens.transpose(1, 2).reshape(batch, dim, *grid)  # (B, C, H, W)
            reduced = self.norm(self.sr(img).flatten(2).transpose(1, 2))  # (B, H*W/r^2, C)
            source = torch.cat([prefix, reduced], dim=1)
        kv = self.kv(source).reshape(batch, -1, 2, self.num_heads, head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, M, d)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        else:
            out = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v  # (B, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(batch, n, dim))


class Block(nn.Module):
    """Pre-norm block: attention, then LN + GELU MLP or (with `locality`) the locality FFN."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float, qkv_bias: bool,
                 norm_eps: float, drop_path: float, locality: LocalitySpec | None,
                 sr_ratio: int = 1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SpatialReductionAttention(dim, num_heads, qkv_bias, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.locality = locality is not None
        if locality is not None:
            self.ffn = LocalityFeedForward(dim, locality, mlp_ratio=mlp_ratio)
        else:
            self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0
                ) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid, num_prefix_tokens))
        if hasattr(self, "ffn"):  # locality on (hasattr is static under TorchScript)
            return self.ffn(x, grid, num_prefix_tokens)
        return x + self.drop_path(self.mlp(self.norm2(x)))
