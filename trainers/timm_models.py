"""Every registry variant as a timm model: a pretrained config per name and timm's builder.

`import trainers` registers each name of `trainers.registry.VARIANTS` with timm, so
`timm.create_model("localvit_micro", num_classes=10, drop_rate=0.1)` builds it through timm's own
`build_model_with_cfg`: the model carries `pretrained_cfg` / `default_cfg` (input size, mean and
std, crop, interpolation, first conv, classifier, pool size, the papers), so
`timm.data.resolve_data_config(model=m)` gives each model's own input (16 px for the micro ViTs),
and `features_only=True` / `out_indices` wrap it the way timm wraps its counterpart family:
Swin through timm's feature-list wrapper on its stages, the others through
`forward_intermediates` (PVT's four stages, the ViT-like models' blocks).

timm's keywords (`num_classes`, `in_chans`, `img_size`, `drop_rate`, `drop_path_rate`,
`global_pool`) reach `trainers.registry.create_model`, as do its own (`locality=...` and
architecture overrides, checked there). No weights exist: `pretrained=True` raises.

A name timm itself defines is never registered over: importing raises, naming the name.
"""

from __future__ import annotations

import sys
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, is_model, register_model
from torch import nn

from .backbones.pvt import check_pvt_img_size
from .backbones.swin import feature_levels
from .errors import ModelConfigError
from .registry import VARIANTS, Variant, create_model

__all__ = ["PAPERS", "check_name_clashes", "default_cfgs", "pretrained_cfg_of"]

LOCALVIT = "arXiv:2104.05707"
# The paper of each backbone family, beside LocalViT's (the cfg's `paper_ids`).
PAPERS = {"deit": "arXiv:2012.12877", "swin": "arXiv:2103.14030", "tnt": "arXiv:2103.00112",
          "pvt": "arXiv:2102.12122", "t2t": "arXiv:2101.11986"}
# The first weighted layer that sees the image (timm adapts it for in_chans != 3).
_FIRST_CONV = {"deit": "patch_embed.proj", "swin": "patch_embed.proj",
               "tnt": "pixel_embed.proj", "pvt": "stages.0.patch_embed.proj",
               "t2t": "tokens_to_token.layers.0.kqv"}


def _pool_size(row: Variant) -> tuple[int, int] | None:
    """The spatial size of `forward_features` for the models timm treats as spatial: Swin's last
    stage grid, PVT's (1 + H*W, 1) token map; None for the ViT-like models (tokens)."""
    if row.family == "swin":
        side = row.img_size // row.arch.patch_size // 2 ** (len(row.arch.depths) - 1)
        return side, side
    if row.family == "pvt":
        height, width = check_pvt_img_size(row.arch, row.img_size)[-1]
        return 1 + height * width, 1
    return None


def pretrained_cfg_of(row: Variant) -> dict[str, Any]:
    """timm's pretrained config of a variant: its own input size; the paper models the ImageNet
    recipe's crop (224 of 256 px), the micro models their whole (small) image."""
    paper = row.img_size >= 224
    cfg: dict[str, Any] = dict(
        url="", num_classes=1000, input_size=(3, row.img_size, row.img_size),
        fixed_input_size=True, interpolation="bicubic", crop_pct=0.875 if paper else 1.0,
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv=_FIRST_CONV[row.family],
        classifier="head.fc" if row.family == "swin" else "head",
        paper_ids=(LOCALVIT, PAPERS[row.family]),
        description=f"{row.name}: {row.family} backbone"
                    + (" with the locality FFN" if row.locality is not None else ""),
    )
    pool = _pool_size(row)
    if pool is not None:
        cfg["pool_size"] = pool
    return cfg


# timm's register_model reads the pretrained configs from this module attribute.
default_cfgs = generate_default_cfgs({name: pretrained_cfg_of(row)
                                      for name, row in VARIANTS.items()})


def _feature_cfg(row: Variant) -> dict[str, Any]:
    """How `features_only=True` wraps the model, as timm wraps the counterpart family: Swin's
    stages through the feature-list wrapper, PVT's stages and the ViT-like models' last three
    blocks through `forward_intermediates`."""
    if row.family == "swin":
        return dict(flatten_sequential=True, out_indices=tuple(range(feature_levels(row.arch))))
    if row.family == "pvt":
        return dict(feature_cls="getter", out_indices=tuple(range(len(row.arch.depths))))
    return dict(feature_cls="getter", out_indices=3)


def _entrypoint(name: str):
    row = VARIANTS[name]

    def build(**kwargs: Any) -> nn.Module:
        return create_model(name, **kwargs)

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise ModelConfigError(
                f"{name} has no pretrained weights here; use pretrained=False and train it"
            )
        return build_model_with_cfg(build, name, pretrained=False,
                                    feature_cfg=_feature_cfg(row), **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"LocalViT registry model {name!r} (trainers.registry.create_model)."
    return entrypoint


def check_name_clashes(names: list[str]) -> None:
    """Raise ImportError if timm already defines one of `names` in a module other than this one,
    so a timm release that adds one of our names never silently builds its model for ours."""
    from timm.models import is_model_in_modules

    module = __name__.split(".")[-1]  # timm keys its registry by the last module name part
    clashes = [n for n in names if is_model(n) and not is_model_in_modules(n, [module])]
    if clashes:
        import timm

        raise ImportError(
            f"timm {timm.__version__} already defines model name(s) {', '.join(clashes)} that "
            f"trainers registers for its own variants; rename them in trainers.registry.VARIANTS "
            f"(and the specs that use them) or install a timm without them"
        )


def _register() -> None:
    check_name_clashes(list(VARIANTS))
    ours = sys.modules[__name__]
    for name in VARIANTS:
        setattr(ours, name, register_model(_entrypoint(name)))


_register()
