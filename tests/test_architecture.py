"""Every registry variant's architecture, read off the built modules, against a table of facts.

Parameter counts do not see the number of attention heads (the qkv projection has the same size
for 3 or 4 heads), nor a reordering of equal-sized stages; this table does. The paper rows are
docs/paper.md section 3 (LocalViT, Li et al., arXiv 2104.05707, and the backbones' own papers:
DeiT table 1, PVT v1 table 1, TNT, T2T-ViT table 1, Swin table 1); the micro rows are the
project's CPU sizes as documented in trainers/registry.py. Nothing here is read from the
registry's own tables: the test inspects the modules it builds (`blk.attn.num_heads`, conv
kernels, hidden widths).

Per stage the table gives (patch or downsampling, width, depth, heads, MLP ratio); a locality
FFN is (gamma, SE hidden width or None, activation code). A model without a stage field writes
None there.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from trainers import registry
from trainers.locality import ECA, LocalityFeedForward, SqueezeExcite


@dataclass(frozen=True)
class Stage:
    patch: int | None          # patch size / downsampling factor entering the stage
    dim: int
    depth: int
    heads: int
    mlp: float                 # GELU MLP ratio (the baseline; locality blocks replace it)
    extra: tuple = ()          # family specifics (window, SR ratio, inner dim / heads ...)


@dataclass(frozen=True)
class FFN:
    gamma: int
    se_hidden: int | None
    act: str


@dataclass(frozen=True)
class Arch:
    img: int
    stages: tuple[Stage, ...]
    ffn: tuple[FFN | None, ...] | FFN | None = None   # per stage, or one for every stage
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    tokens: tuple = ()                                 # T2T token layers: (splits, dim, ffn)


_T, _S = 192, 384
LVT_T = FFN(4, 4, "hs+se")                     # gamma 4, SE hidden 4 (reduction 192 on 768)
# DeiT-T / -S (DeiT table 1): patch 16, 12 blocks, MLP 4; LocalViT-T / -S use 4 / 8 heads.
DEIT_T = Stage(16, _T, 12, 3, 4.0)
DEIT_S = Stage(16, _S, 12, 6, 4.0)
LVT_T_STAGE = Stage(16, _T, 12, 4, 4.0)
LVT_S_STAGE = Stage(16, _S, 12, 8, 4.0)
# PVT-Tiny (PVT v1 table 1): patch 4,2,2,2; dims 64,128,320,512; heads 1,2,5,8; MLP 8,8,4,4;
# depth 2 each; spatial reduction 8,4,2,1. LocalViT-PVT: gamma = MLP ratio, SE hidden = gamma.
PVT_T = tuple(Stage(p, d, 2, h, r, (("sr", s),)) for p, d, h, r, s in
              zip((4, 2, 2, 2), (64, 128, 320, 512), (1, 2, 5, 8), (8, 8, 4, 4), (8, 4, 2, 1),
                  strict=True))
LVT_PVT = tuple(FFN(g, g, "hs+se") for g in (8, 8, 4, 4))
# TNT-T: patch 16, outer 192 / inner 12, 12 blocks, 3 + 3 heads, MLP 4 inside and out, no qkv
# bias; LocalViT-TNT replaces the outer MLP only.
TNT_T = Stage(16, _T, 12, 3, 4.0, (("inner_dim", 12), ("inner_heads", 3), ("inner_mlp", 4.0)))
# T2T-ViT-7 (T2T-ViT table 1): splits (7,4,2), (3,2,1), (3,2,1) around two Performer layers of
# width 64; embed 256, 7 blocks, 4 heads, MLP 2, no qkv bias, LayerNorm eps 1e-5.
T2T_7 = Stage(None, 256, 7, 4, 2.0)
T2T_SPLITS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))
T2T_TOKEN_FFN = FFN(1, None, "hs")             # the token layers' own locality FFN
# Swin-T (Swin table 1): patch 4, dims 96..768, depths 2,2,6,2, heads 3,6,12,24, window 7;
# LocalViT-Swin: reduction dim/4, so SE hidden = 4 * dim // (dim / 4) = 16.
SWIN_T = tuple(Stage(p, d, n, h, 4.0, (("window", 7),)) for p, d, n, h in
               zip((4, 2, 2, 2), (96, 192, 384, 768), (2, 2, 6, 2), (3, 6, 12, 24), strict=True))

# The CPU sizes (trainers/registry.py): 16 px ViT in 4 px patches, 32 px for the others.
VIT_M = Stage(4, 64, 4, 2, 4.0)
PVT_M = tuple(Stage(p, d, 1, h, r, (("sr", s),)) for p, d, h, r, s in
              zip((2, 2, 2, 2), (32, 48, 64, 96), (1, 2, 2, 4), (4, 4, 2, 2), (4, 2, 1, 1),
                  strict=True))
TNT_M = Stage(8, 64, 4, 2, 4.0, (("inner_dim", 8), ("inner_heads", 2), ("inner_mlp", 4.0)))
T2T_M = Stage(None, 64, 4, 2, 2.0)
T2T_M_SPLITS = ((3, 2, 1), (3, 2, 1), (3, 1, 1))
SWIN_M = (Stage(2, 32, 2, 2, 4.0, (("window", 4),)), Stage(2, 64, 2, 4, 4.0, (("window", 4),)))

TABLE: dict[str, Arch] = {
    "deit_tiny": Arch(224, (DEIT_T,)),
    "localvit_tiny": Arch(224, (LVT_T_STAGE,), LVT_T),
    "localvit_tiny_se4": Arch(224, (LVT_T_STAGE,), FFN(4, 192, "hs+se")),   # SE reduction 4
    "deit_small": Arch(224, (DEIT_S,)),
    "localvit_small": Arch(224, (LVT_S_STAGE,), FFN(4, 4, "hs+se")),       # reduction 384
    "pvt_tiny": Arch(224, PVT_T),
    "localvit_pvt_tiny": Arch(224, PVT_T, LVT_PVT),
    "tnt_tiny": Arch(224, (TNT_T,), qkv_bias=False, norm_eps=1e-5),
    "localvit_tnt_tiny": Arch(224, (TNT_T,), LVT_T, qkv_bias=False, norm_eps=1e-5),
    "t2t_vit_7": Arch(224, (T2T_7,), qkv_bias=False, norm_eps=1e-5,
                      tokens=(T2T_SPLITS, 64, None)),
    "localvit_t2t_7": Arch(224, (T2T_7,), FFN(2, 4, "hs+se"), qkv_bias=False, norm_eps=1e-5,
                           tokens=(T2T_SPLITS, 64, T2T_TOKEN_FFN)),               # reduction 128
    "swin_tiny": Arch(224, SWIN_T, norm_eps=1e-5),
    "localvit_swin_tiny": Arch(224, SWIN_T, FFN(4, 16, "hs+se"), norm_eps=1e-5),
    "vit_micro": Arch(16, (VIT_M,)),
    "localvit_micro": Arch(16, (VIT_M,), LVT_T),
    "swin_micro": Arch(32, SWIN_M, norm_eps=1e-5),
    "localvit_swin_micro": Arch(32, SWIN_M, FFN(4, 16, "hs+se"), norm_eps=1e-5),
    "tnt_micro": Arch(32, (TNT_M,), qkv_bias=False, norm_eps=1e-5),
    "localvit_tnt_micro": Arch(32, (TNT_M,), LVT_T, qkv_bias=False, norm_eps=1e-5),
    "pvt_micro": Arch(32, PVT_M),
    "localvit_pvt_micro": Arch(32, PVT_M, tuple(FFN(g, g, "hs+se") for g in (4, 4, 2, 2))),
    "t2t_vit_micro": Arch(32, (T2T_M,), qkv_bias=False, norm_eps=1e-5,
                          tokens=(T2T_M_SPLITS, 32, None)),
    # Reduction 128 on a hidden width of 128: an SE bottleneck of 1.
    "localvit_t2t_micro": Arch(32, (T2T_M,), FFN(2, 1, "hs+se"), qkv_bias=False, norm_eps=1e-5,
                               tokens=(T2T_M_SPLITS, 32, T2T_TOKEN_FFN)),
}


# ----------------------------------------------------------------------------- reading modules

def read_ffn(ffn: LocalityFeedForward | None, dim: int) -> FFN | None:
    if ffn is None:
        return None
    convs = [m for m in ffn.modules() if type(m) is nn.Conv2d]
    gamma = convs[0].out_channels // dim
    assert convs[0].out_channels == gamma * dim
    assert any(m.groups == gamma * dim and m.kernel_size == (3, 3) for m in convs), "no dw conv"
    se = [m for m in ffn.modules() if isinstance(m, SqueezeExcite)]
    eca = [m for m in ffn.modules() if isinstance(m, ECA)]
    acts = {type(m) for m in ffn.modules() if isinstance(m, (nn.ReLU6, nn.Hardswish))}
    assert len(acts) == 1, acts
    if nn.ReLU6 in acts:
        act = "relu6"
    elif se:
        act = "hs+se"
    elif eca:
        act = "hs+ecah" if isinstance(eca[0].gate, nn.Hardsigmoid) else "hs+eca"
    else:
        act = "hs"
    return FFN(gamma, se[0].fc1.out_features if se else None, act)


def _mlp_ratio(block: nn.Module, dim: int) -> float | None:
    mlp = getattr(block, "mlp", None)
    return None if mlp is None else mlp.fc1.out_features / dim


def _block(block, dim, heads_of, extra=()):
    """(heads, MLP ratio or None, FFN or None, qkv bias, LayerNorm eps, extras) of one block."""
    attn = block.attn if hasattr(block, "attn") else block.attn_out
    qkv = getattr(attn, "qkv", None) or getattr(attn, "q", None) or attn.qk
    norm = getattr(block, "norm1", None) or block.norm_out
    return (heads_of(block), _mlp_ratio(block, dim), read_ffn(getattr(block, "ffn", None), dim),
            qkv.bias is not None, norm.eps, tuple(extra))


def _conv_patch(conv: nn.Conv2d) -> int:
    assert conv.kernel_size[0] == conv.stride[0]
    return conv.kernel_size[0]


def read_stages(name: str, model: nn.Module) -> list[tuple[int | None, int, list[tuple]]]:
    """[(patch, width, [block summaries])] in forward order, for any family."""
    fam = registry.family(name)
    if fam == "deit":
        dim = model.embed_dim
        return [(_conv_patch(model.patch_embed.proj), dim,
                 [_block(b, dim, lambda b: b.attn.num_heads) for b in model.blocks])]
    if fam == "swin":
        out = []
        for i, stage in enumerate(model.layers):
            patch = (_conv_patch(model.patch_embed.proj) if i == 0
                     else 2 if not isinstance(stage.downsample, nn.Identity) else 1)
            dim = stage.blocks[0].dim
            out.append((patch, dim, [
                _block(b, dim, lambda b: b.attn.num_heads, (("window", b.window_size[0]),))
                for b in stage.blocks]))
        return out
    if fam == "pvt":
        out = []
        for stage in model.stages:
            dim = stage.patch_embed.proj.out_channels
            out.append((_conv_patch(stage.patch_embed.proj), dim, [
                _block(b, dim, lambda b: b.attn.num_heads,
                       (("sr", _conv_patch(b.attn.sr) if hasattr(b.attn, "sr") else 1),))
                for b in stage.blocks]))
        return out
    if fam == "tnt":
        dim = model.embed_dim
        blocks = []
        for b in model.blocks:
            inner = b.attn_in.v.in_features
            blocks.append(_block(b, dim, lambda b: b.attn_out.num_heads, (
                ("inner_dim", inner), ("inner_heads", b.attn_in.num_heads),
                ("inner_mlp", b.mlp_in.fc1.out_features / inner))))
        patch = model.pixel_embed.patch_size
        return [(patch[0] if patch[0] == patch[1] else patch, dim, blocks)]
    if fam == "t2t":
        dim = model.embed_dim
        return [(None, dim, [_block(b, dim, lambda b: b.attn.num_heads) for b in model.blocks])]
    raise AssertionError(f"no reader for family {fam}")


def build(name: str) -> nn.Module:
    try:
        with torch.device("meta"):
            return registry.create_model(name)
    except NotImplementedError:  # T2T reads tensor values while building
        return registry.create_model(name)


def test_the_table_covers_every_registered_variant():
    assert set(TABLE) == set(registry.list_models())


@pytest.mark.parametrize("name", list(TABLE))
def test_architecture_matches_the_table(name):
    want = TABLE[name]
    model = build(name)
    assert registry.default_img_size(name) == want.img
    stages = read_stages(name, model)
    assert len(stages) == len(want.stages), "number of stages"
    ffns = want.ffn if isinstance(want.ffn, tuple) else (want.ffn,) * len(want.stages)
    for i, ((patch, dim, blocks), stage, ffn) in enumerate(
            zip(stages, want.stages, ffns, strict=True)):
        where = f"{name} stage {i + 1}"
        if stage.patch is not None:
            assert patch == stage.patch, f"{where}: patch"
        assert dim == stage.dim, f"{where}: width"
        assert len(blocks) == stage.depth, f"{where}: depth"
        for j, (heads, mlp, got_ffn, qkv_bias, eps, extra) in enumerate(blocks):
            at = f"{where} block {j + 1}"
            assert heads == stage.heads, f"{at}: heads {heads}, expected {stage.heads}"
            assert got_ffn == ffn, f"{at}: locality FFN {got_ffn}, expected {ffn}"
            # The GELU MLP is there exactly where the locality FFN is not.
            assert mlp == (None if ffn else stage.mlp), f"{at}: MLP ratio {mlp}"
            assert qkv_bias == want.qkv_bias, f"{at}: qkv bias"
            assert eps == pytest.approx(want.norm_eps), f"{at}: LayerNorm eps"
            assert extra == stage.extra, f"{at}: {extra} != {stage.extra}"


@pytest.mark.parametrize("name", [n for n, a in TABLE.items() if a.tokens])
def test_t2t_token_module(name):
    splits, width, ffn = TABLE[name].tokens
    t2t = build(name).tokens_to_token
    assert [(s.kernel_size, s.stride, s.padding) for s in t2t.splits] == list(splits)
    assert len(t2t.layers) == len(splits) - 1
    for layer in t2t.layers:
        assert layer.proj.out_features == width
        assert read_ffn(getattr(layer, "ffn", None), width) == ffn
        assert (getattr(layer, "mlp", None) is None) == (ffn is not None)


@pytest.mark.parametrize("name", [n for n in TABLE if registry.family(n) in ("deit", "t2t")])
def test_class_token_and_position_table(name):
    # DeiT: a learned position embedding; T2T-ViT: a frozen sinusoid table (docs/paper.md 3).
    model = build(name)
    dim, img = TABLE[name].stages[0].dim, TABLE[name].img
    assert model.cls_token.shape == (1, 1, dim)
    tokens = model.pos_embed.shape[1]
    if registry.family(name) == "deit":
        assert tokens == 1 + (img // TABLE[name].stages[0].patch) ** 2
        assert model.pos_embed.requires_grad
    else:
        assert tokens == 1 + int(model.grid[0] * model.grid[1])
        assert not model.pos_embed.requires_grad
