"""Backbone families that accept a locality spec: DeiT, Swin, TNT (timm), PVT v1, T2T-ViT (here).

`FAMILIES` maps a family name to one uniform adapter, so the registry builds, counts blocks and
checks image sizes the same way for every family:

- `build(arch, *, locality, num_classes, img_size, drop_path_rate, in_chans, explicit)`: the model;
  `explicit` is the set of locality knobs the caller set by hand (PVT uses it: see below);
- `num_blocks(arch)`: transformer blocks in forward order (the range of `locality.layers`);
- `check_img_size(arch, img_size)`: raises ModelConfigError when the model cannot take the size.

Family rules for the locality spec:
- PVT: gamma is each stage's MLP ratio (the paper's LocalViT-PVT: 8, 8, 4, 4) unless the caller
  sets `locality.expansion` explicitly, in which case every stage uses that expansion.
- T2T: whenever the backbone blocks get the locality FFN, both Performer token layers get one too,
  with gamma 1, h-swish, no SE (the paper's LocalViT-T2T); `dw_conv` follows the spec.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from torch import nn

from ..locality import LocalitySpec
from . import deit, pvt, swin, t2t, tnt

__all__ = ["FAMILIES", "Family"]


@dataclass(frozen=True)
class Family:
    name: str
    arch_cls: type
    build: Callable[..., nn.Module]
    num_blocks: Callable[[Any], int]
    check_img_size: Callable[[Any, Any], Any]


def _plain(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(arch: Any, *, explicit: frozenset[str] = frozenset(), **kwargs: Any) -> nn.Module:
        return builder(arch, **kwargs)
    return build


def _build_pvt(arch: pvt.PVTArch, *, locality: LocalitySpec | None,
               explicit: frozenset[str] = frozenset(), **kwargs: Any) -> nn.Module:
    expansion_from = "spec" if "expansion" in explicit else "mlp_ratio"
    return pvt.build_pvt(arch, locality=locality, expansion_from=expansion_from, **kwargs)


def _build_t2t(arch: t2t.T2TArch, *, locality: LocalitySpec | None,
               explicit: frozenset[str] = frozenset(), **kwargs: Any) -> nn.Module:
    token = None
    if locality is not None:
        token = replace(locality, act="hs", expansion=1, layers="all")
    return t2t.build_t2t(arch, locality=locality, token_locality=token, **kwargs)


FAMILIES: dict[str, Family] = {
    "deit": Family("deit", deit.ViTArch, _plain(deit.build_deit), deit.num_blocks,
                   deit.check_img_size),
    "swin": Family("swin", swin.SwinArch, _plain(swin.build_swin), swin.num_blocks,
                   swin.check_img_size),
    "tnt": Family("tnt", tnt.TNTArch, _plain(tnt.build_tnt), tnt.num_blocks,
                  tnt.check_img_size),
    "pvt": Family("pvt", pvt.PVTArch, _build_pvt, pvt.pvt_depth, pvt.check_pvt_img_size),
    "t2t": Family("t2t", t2t.T2TArch, _build_t2t, t2t.t2t_depth, t2t.check_t2t_img_size),
}
