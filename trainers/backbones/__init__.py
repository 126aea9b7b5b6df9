"""Backbone families that accept a locality spec: DeiT, Swin, TNT (timm), PVT v1, T2T-ViT (here).

`FAMILIES` maps a family name to one uniform interface, so the registry builds, counts blocks and
checks image sizes the same way for every family:

- `build(arch, *, locality, num_classes, img_size, drop_path_rate, in_chans, drop_rate,
  global_pool)`: the model; T2T's also takes `token_locality` (its Performer token layers' FFN,
  a value of the variant table);
- `num_blocks(arch)`: transformer blocks in forward order (the range of `locality.layers`);
- `check_img_size(arch, img_size)`: raises ModelConfigError when the model cannot take the size.

Family rules are values, not code: LocalViT-PVT's gamma is each stage's MLP ratio because its
locality spec says `expansion: mlp_ratio`; LocalViT-T2T's token layers get their FFN because its
variant row says `token_locality` (trainers/registry.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from . import deit, pvt, swin, t2t, tnt
from ._common import TOKEN_POOLS

__all__ = ["FAMILIES", "Family"]


@dataclass(frozen=True)
class Family:
    name: str
    arch_cls: type
    build: Callable[..., nn.Module]
    num_blocks: Callable[[Any], int]
    check_img_size: Callable[[Any, Any], Any]
    # timm's global_pool values the family's head takes; the first is its default.
    global_pools: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    "deit": Family("deit", deit.ViTArch, deit.build_deit, deit.num_blocks, deit.check_img_size,
                   ("token", "avg", "avgmax", "max", "")),
    "swin": Family("swin", swin.SwinArch, swin.build_swin, swin.num_blocks, swin.check_img_size,
                   ("avg", "max", "avgmax", "")),
    "tnt": Family("tnt", tnt.TNTArch, tnt.build_tnt, tnt.num_blocks, tnt.check_img_size,
                  ("token", "avg", "")),
    "pvt": Family("pvt", pvt.PVTArch, pvt.build_pvt, pvt.pvt_depth, pvt.check_pvt_img_size,
                  TOKEN_POOLS),
    "t2t": Family("t2t", t2t.T2TArch, t2t.build_t2t, t2t.t2t_depth, t2t.check_t2t_img_size,
                  TOKEN_POOLS),
}
