"""Named model variants as data, `create_model(name, **overrides)`, and their timm registration.

Every name is a row of `VARIANTS`: a backbone family, its architecture (a frozen dataclass of the
family), default input size, whether the locality FFN is on by default, the locality knobs a plain
backbone gets when it is asked for locality, and the paper's figures (LocalViT, Li et al., arXiv
2104.05707, table 5; docs/paper.md section 5) so `trainers.profile` can print them beside ours.
An ablation knob is never a new name: `create_model("deit_tiny", locality={"act": "relu6"})`.

Each name is also a timm model (`timm.create_model("localvit_tiny")`), registered with its
pretrained config by `trainers.timm_models` when `trainers` is imported.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypedDict

from torch import nn

from .backbones import FAMILIES, Family
from .backbones._common import apply_arch_overrides, check_global_pool
from .backbones.deit import ViTArch
from .backbones.pvt import PVT_ARCHS
from .backbones.swin import SwinArch
from .backbones.t2t import T2T_ARCHS
from .backbones.tnt import TNTArch
from .config import ModelConfig
from .errors import ModelConfigError
from .locality import LocalitySpec, merge_locality, resolve_layers

__all__ = [
    "ModelConfigError",
    "PaperFigures",
    "TIMM_KWARGS",
    "VARIANTS",
    "Variant",
    "build_from_config",
    "check_model_config",
    "create_model",
    "default_img_size",
    "depth",
    "family",
    "get_variant",
    "list_models",
    "resolve_locality",
    "smoke_variant",
]


@dataclass(frozen=True)
class PaperFigures:
    """A row of LocalViT table 5 (ImageNet-1k, 224 px): params in M, FLOPs (MACs) in G, top-1 %."""

    params_m: float
    macs_g: float | None
    top1: float | None


@dataclass(frozen=True)
class Variant:
    name: str
    family: str
    arch: Any
    img_size: int
    # The locality FFN this variant has by default (None: the plain backbone with its GELU MLP).
    locality: LocalitySpec | None
    # The knobs a plain backbone starts from when a caller switches locality on.
    knobs: LocalitySpec
    smoke: str
    drop_path_rate: float = 0.1
    paper: PaperFigures | None = None
    # T2T-ViT: the knobs of the Performer token layers' locality FFN, over the blocks' locality;
    # the token layers get it whenever the blocks have locality (None: the family has none).
    token_locality: Mapping[str, Any] | None = None


# Locality defaults per family (docs/paper.md section 3). "dim" keeps SE hidden = expansion = 4
# for any width; DeiT's rows spell the paper's absolute reductions.
_DEIT_T = LocalitySpec(act="hs+se", expansion=4, reduction=192)
_DEIT_S = LocalitySpec(act="hs+se", expansion=4, reduction=384)
_SE4 = LocalitySpec(act="hs+se", expansion=4, reduction=4)
_BY_DIM = LocalitySpec(act="hs+se", expansion=4, reduction="dim")
_SWIN = LocalitySpec(act="hs+se", expansion=4, reduction="dim/4")
# LocalViT-PVT: gamma = each stage's MLP ratio (8, 8, 4, 4) and SE hidden = gamma.
_PVT = LocalitySpec(act="hs+se", expansion="mlp_ratio", reduction="dim")
_T2T = LocalitySpec(act="hs+se", expansion=2, reduction=128)
# LocalViT-T2T's token layers: gamma 1, h-swish, no SE, both layers; dw_conv follows the blocks'.
_T2T_TOKENS = {"act": "hs", "expansion": 1, "layers": "all"}

_DEIT_TINY = ViTArch(patch_size=16, embed_dim=192, depth=12, num_heads=3)
_DEIT_SMALL = ViTArch(patch_size=16, embed_dim=384, depth=12, num_heads=6)
# CPU quick-start size: 4 blocks, dim 64, 2 heads, 16 px inputs in 4 px patches (a 4x4 grid).
_VIT_MICRO = ViTArch(patch_size=4, embed_dim=64, depth=4, num_heads=2)
_SWIN_TINY = SwinArch()
# 32 px in 2 px patches: a 16x16 grid, then 8x8; window 4.
_SWIN_MICRO = SwinArch(patch_size=2, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4)
_TNT_TINY = TNTArch()
# 32 px in 8 px patches (a 4x4 grid), each holding 2x2 pixel tokens of width 8.
_TNT_MICRO = TNTArch(patch_size=8, embed_dim=64, inner_dim=8, depth=4, num_heads_outer=2,
                     num_heads_inner=2)


# The keyword groups _rows spreads into Variant(...), typed so that the checker sees each keyword.
class _MicroKwargs(TypedDict):
    drop_path_rate: float


class _TokenKwargs(TypedDict):
    token_locality: Mapping[str, Any]


def _rows() -> list[Variant]:
    pvt_t, pvt_m = PVT_ARCHS["pvt_tiny"], PVT_ARCHS["pvt_micro"]
    t2t_7, t2t_m = T2T_ARCHS["t2t_vit_7"], T2T_ARCHS["t2t_vit_micro"]
    heads4 = ViTArch(patch_size=16, embed_dim=192, depth=12, num_heads=4)
    heads8 = ViTArch(patch_size=16, embed_dim=384, depth=12, num_heads=8)
    micro = _MicroKwargs(drop_path_rate=0.0)
    tokens = _TokenKwargs(token_locality=_T2T_TOKENS)
    return [
        # LocalViT table 5, DeiT rows (DeiT, Touvron et al. 2021, table 1).
        Variant("deit_tiny", "deit", _DEIT_TINY, 224, None, _DEIT_T, "vit_micro",
                paper=PaperFigures(5.7, 1.3, 72.2)),
        Variant("localvit_tiny", "deit", heads4, 224, _DEIT_T, _DEIT_T, "localvit_micro",
                paper=PaperFigures(5.9, 1.3, 74.8)),
        # The released "LocalViT-T-SE4" checkpoint: SE reduction 4 (SE hidden 192).
        Variant("localvit_tiny_se4", "deit", heads4, 224, _SE4, _SE4, "localvit_micro",
                paper=PaperFigures(9.4, None, 75.74)),
        Variant("deit_small", "deit", _DEIT_SMALL, 224, None, _DEIT_S, "vit_micro",
                paper=PaperFigures(22.1, 4.6, 79.8)),
        Variant("localvit_small", "deit", heads8, 224, _DEIT_S, _DEIT_S, "localvit_micro",
                paper=PaperFigures(22.4, 4.6, 80.8)),
        # PVT v1 (Wang et al. 2021, table 1). The paper's PVT FLOPs count full N x N attention.
        Variant("pvt_tiny", "pvt", pvt_t, 224, None, _PVT, "pvt_micro",
                paper=PaperFigures(13.2, 4.7, 75.1)),
        Variant("localvit_pvt_tiny", "pvt", pvt_t, 224, _PVT, _PVT, "localvit_pvt_micro",
                paper=PaperFigures(13.5, 4.8, 78.2)),
        # TNT (Han et al. 2021), the tiny size of the LocalViT paper.
        Variant("tnt_tiny", "tnt", _TNT_TINY, 224, None, _BY_DIM, "tnt_micro",
                paper=PaperFigures(6.1, 1.4, 73.6)),
        Variant("localvit_tnt_tiny", "tnt", _TNT_TINY, 224, _BY_DIM, _BY_DIM,
                "localvit_tnt_micro", paper=PaperFigures(6.3, 1.4, 75.9)),
        # T2T-ViT-7 (Yuan et al. 2021, table 1), Performer token layers.
        Variant("t2t_vit_7", "t2t", t2t_7, 224, None, _T2T, "t2t_vit_micro",
                paper=PaperFigures(4.3, 1.2, 71.7), **tokens),
        # The paper prints 4.3 M; the authors' code gives 4,385,386 (4.4 M), ours 256 fewer.
        Variant("localvit_t2t_7", "t2t", t2t_7, 224, _T2T, _T2T, "localvit_t2t_micro",
                paper=PaperFigures(4.3, 1.2, 72.5), **tokens),
        # Swin-T (Liu et al. 2021, table 1); the paper reports LocalViT-Swin's gain, not Swin-T's
        # own top-1.
        Variant("swin_tiny", "swin", _SWIN_TINY, 224, None, _SWIN, "swin_micro",
                paper=PaperFigures(28.3, 4.5, None)),
        Variant("localvit_swin_tiny", "swin", _SWIN_TINY, 224, _SWIN, _SWIN,
                "localvit_swin_micro", paper=PaperFigures(29.1, 4.5, 81.9)),
        # Small CPU variants, one pair per family (8-32 px inputs).
        Variant("vit_micro", "deit", _VIT_MICRO, 16, None, _BY_DIM, "vit_micro", **micro),
        Variant("localvit_micro", "deit", _VIT_MICRO, 16, _BY_DIM, _BY_DIM, "localvit_micro",
                **micro),
        Variant("swin_micro", "swin", _SWIN_MICRO, 32, None, _SWIN, "swin_micro", **micro),
        Variant("localvit_swin_micro", "swin", _SWIN_MICRO, 32, _SWIN, _SWIN,
                "localvit_swin_micro", **micro),
        Variant("tnt_micro", "tnt", _TNT_MICRO, 32, None, _BY_DIM, "tnt_micro", **micro),
        Variant("localvit_tnt_micro", "tnt", _TNT_MICRO, 32, _BY_DIM, _BY_DIM,
                "localvit_tnt_micro", **micro),
        Variant("pvt_micro", "pvt", pvt_m, pvt_m.img_size, None, _PVT, "pvt_micro", **micro),
        Variant("localvit_pvt_micro", "pvt", pvt_m, pvt_m.img_size, _PVT, _PVT,
                "localvit_pvt_micro", **micro),
        Variant("t2t_vit_micro", "t2t", t2t_m, t2t_m.img_size, None, _T2T, "t2t_vit_micro",
                **micro, **tokens),
        Variant("localvit_t2t_micro", "t2t", t2t_m, t2t_m.img_size, _T2T, _T2T,
                "localvit_t2t_micro", **micro, **tokens),
    ]


VARIANTS: dict[str, Variant] = {row.name: row for row in _rows()}


def list_models() -> list[str]:
    return list(VARIANTS)


def get_variant(name: str) -> Variant:
    """The variant row; ModelConfigError naming near matches and every valid name otherwise."""
    row = VARIANTS.get(name) if isinstance(name, str) else None
    if row is None:
        near = difflib.get_close_matches(str(name), list(VARIANTS), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise ModelConfigError(
            f"unknown model {name!r}; {hint}valid models: {', '.join(VARIANTS)}"
        )
    return row


def family(name: str) -> str:
    return get_variant(name).family


def default_img_size(name: str) -> int:
    return get_variant(name).img_size


def depth(name: str, **arch: Any) -> int:
    """Transformer blocks in forward order (the range of `locality.layers`)."""
    row = get_variant(name)
    return FAMILIES[row.family].num_blocks(apply_arch_overrides(row.arch, arch, model=name))


def smoke_variant(name: str) -> str:
    """The small CPU variant of the same family, with the same locality on/off default."""
    return get_variant(name).smoke


def resolve_locality(name: str, locality: Any = "default") -> LocalitySpec | None:
    """The locality spec `create_model(name, locality=...)` builds with (None: no locality FFN)."""
    row = get_variant(name)
    return merge_locality(row.knobs, row.locality, locality)


def _mlp_ratios(arch: Any) -> tuple[float, ...]:
    ratios = getattr(arch, "mlp_ratios", None)
    return tuple(ratios) if ratios is not None else (arch.mlp_ratio,)


# timm's standard keywords that create_model takes besides the architecture keys (for hints).
TIMM_KWARGS = ("num_classes", "in_chans", "img_size", "drop_rate", "drop_path_rate", "global_pool")


def _check_rate(key: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0.0 <= value < 1.0):
        raise ModelConfigError(f"{key} must be a number in [0, 1) but got {value!r}")


def _resolve(name: str, locality: Any, img_size: Any, arch: Mapping[str, Any],
             global_pool: str | None = None
             ) -> tuple[Variant, Family, Any, dict[str, Any], Any]:
    """Everything create_model needs (the localities and the pooling as build arguments),
    validated without building anything."""
    row = get_variant(name)
    fam = FAMILIES[row.family]
    arch_obj = apply_arch_overrides(row.arch, arch, model=name, also_valid=TIMM_KWARGS)
    spec = merge_locality(row.knobs, row.locality, locality)
    extra: dict[str, Any] = {"locality": spec}
    if spec is not None:
        resolve_layers(spec.layers, fam.num_blocks(arch_obj))
        for ratio in _mlp_ratios(arch_obj):
            spec.gamma(ratio)  # expansion "mlp_ratio" needs integer MLP ratios
    if row.token_locality is not None:
        extra["token_locality"] = None if spec is None else replace(spec, **row.token_locality)
    size = row.img_size if img_size is None else img_size
    fam.check_img_size(arch_obj, size)
    extra["global_pool"] = check_global_pool(
        fam.global_pools[0] if global_pool is None else global_pool, fam.global_pools, name)
    return row, fam, arch_obj, extra, size


def create_model(name: str, *, locality: Any = "default", num_classes: int = 1000,
                 img_size: int | tuple[int, int] | None = None,
                 drop_path_rate: float | None = None, in_chans: int = 3,
                 drop_rate: float = 0.0, global_pool: str | None = None,
                 **arch: Any) -> nn.Module:
    """Build a named variant.

    locality: "default" (the variant's own; none for a plain backbone), None (no locality FFN),
    or a mapping / trainers.config.LocalityConfig / LocalitySpec of knobs over the variant's (or,
    for a plain backbone, the family's) defaults. `**arch` overrides the architecture (mlp_ratio,
    num_heads, depth, embed_dim, ...; unknown keys raise ModelConfigError listing the valid ones).
    timm's keywords: `drop_rate` (dropout before the classifier), `drop_path_rate` (default: the
    variant's), `global_pool` (default: the family's, "token" or Swin's "avg"; "" for none).
    """
    _check_rate("drop_rate", drop_rate)
    _check_rate("drop_path_rate", drop_path_rate)
    row, fam, arch_obj, extra, size = _resolve(name, locality, img_size, arch, global_pool)
    return fam.build(
        arch_obj, **extra, num_classes=num_classes, img_size=size, in_chans=in_chans,
        drop_path_rate=row.drop_path_rate if drop_path_rate is None else drop_path_rate,
        drop_rate=drop_rate,
    )


def build_from_config(cfg: ModelConfig, *, num_classes: int,
                      img_size: int | tuple[int, int] | None = None) -> nn.Module:
    return create_model(cfg.backbone, locality=cfg.locality, num_classes=num_classes,
                        img_size=img_size, drop_path_rate=cfg.drop_path, **cfg.arch)


def check_model_config(cfg: ModelConfig, *, img_size: int | tuple[int, int] | None = None
                       ) -> None:
    """Validate backbone, locality knobs and layers, arch keys and (if given) the image size.

    Builds nothing; raises ModelConfigError whose message lists the valid choices or range.
    """
    try:
        _resolve(cfg.backbone, cfg.locality, img_size, cfg.arch)
    except TypeError as err:  # a wrongly typed arch value caught by a dataclass check
        raise ModelConfigError(f"model.arch: {err}") from None
