"""Every reach into timm internals (trainers/_timm_compat.py) checked against the installed timm.

Each forward half is checked by completing it with the block's own MLP half and comparing with
timm's forward; each derived argument list against the blocks timm itself builds. A timm upgrade
that moves one of them fails here, by name.
"""

import warnings

import pytest
import torch
from timm.layers import DropPath
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
from timm.models.tnt import TNT, Block as TNTBlock
from timm.models.vision_transformer import Block, VisionTransformer

from trainers import _timm_compat as compat
from trainers.backbones._common import init_vit_weights


def test_the_installed_timm_is_a_checked_version_and_others_warn():
    assert compat.check_timm_version()
    with pytest.warns(RuntimeWarning, match="test_timm_compat"):
        assert not compat.check_timm_version("1.1.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compat.check_timm_version("1.0.99")


def _has_branch(block, names):
    return all(isinstance(getattr(block, n, None), torch.nn.Module) for n in names)


def test_remove_branch_takes_the_mlp_half_and_its_parameters():
    block = Block(16, 2, init_values=0.1)
    before = sum(p.numel() for p in block.parameters())
    mlp = sum(p.numel() for n in compat.VIT_MLP_BRANCH for p in getattr(block, n).parameters())
    compat.remove_branch(block, compat.VIT_MLP_BRANCH)
    assert not any(hasattr(block, n) for n in compat.VIT_MLP_BRANCH)
    assert sum(p.numel() for p in block.parameters()) == before - mlp


def test_vit_attention_half_completes_to_timms_forward():
    torch.manual_seed(0)
    block = Block(16, 2, init_values=0.1, drop_path=0.2).eval()
    assert _has_branch(block, compat.VIT_MLP_BRANCH)
    x = torch.randn(2, 5, 16)
    a = compat.vit_block_attention(block, x)
    mlp_half = a + block.drop_path2(block.ls2(block.mlp(block.norm2(a))))
    assert torch.equal(mlp_half, block(x))


def test_vit_token_grid():
    model = VisionTransformer(img_size=(16, 24), patch_size=4, embed_dim=16, depth=1,
                              num_heads=2, reg_tokens=2)
    assert compat.vit_token_grid(model) == ((4, 6), 3)


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_attention_half_completes_to_timms_forward(shift):
    torch.manual_seed(0)
    block = SwinTransformerBlock(16, (8, 8), num_heads=2, window_size=4, shift_size=shift,
                                 drop_path=0.2).eval()
    assert _has_branch(block, compat.SWIN_MLP_BRANCH)
    x = torch.randn(2, 8, 8, 16)  # NHWC
    a = compat.swin_block_attention(block, x).reshape(2, 64, 16)
    mlp_half = (a + block.drop_path2(block.mlp(block.norm2(a)))).reshape(2, 8, 8, 16)
    assert torch.equal(mlp_half, block(x))


SWIN_SIZES = [
    dict(img_size=(224, 224), patch_size=4, embed_dim=96, depths=(2, 2, 6, 2),
         num_heads=(3, 6, 12, 24), window_size=7),                            # Swin-T
    dict(img_size=(32, 32), patch_size=2, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
         window_size=4),                                                      # swin_micro
    dict(img_size=(24, 40), patch_size=2, embed_dim=16, depths=(2, 3, 1), num_heads=(1, 2, 4),
         window_size=4),                                  # non-square, windows clamped, odd grid
]


def _block_facts(block):
    return (block.dim, tuple(block.input_resolution), tuple(block.window_size),
            tuple(block.shift_size), block.attn.num_heads, block.mlp.fc1.out_features,
            block.attn.qkv.bias is not None,
            block.drop_path1.drop_prob if isinstance(block.drop_path1, DropPath) else 0.0,
            None if block.attn_mask is None else block.attn_mask.tolist())


@pytest.mark.parametrize("size", SWIN_SIZES, ids=["swin_t", "micro", "odd"])
def test_swin_block_args_are_the_ones_timm_derives(size):
    common = dict(mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.2)
    model = SwinTransformer(**size, **common)
    built = [b for stage in model.layers for b in stage.blocks]
    args = compat.swin_block_args(**size, **common)
    assert len(args) == len(built)
    for got, block in zip(args, built, strict=True):
        assert _block_facts(SwinTransformerBlock(**got)) == _block_facts(block)


@pytest.mark.parametrize("legacy", [True, False])
def test_tnt_block_until_mlp_completes_to_timms_forward(legacy):
    torch.manual_seed(0)
    block = TNTBlock(8, 16, num_pixel=4, num_heads_in=2, num_heads_out=2, drop_path=0.2,
                     legacy=legacy).eval()
    assert _has_branch(block, compat.TNT_MLP_BRANCH)
    pixel, patch = torch.randn(2 * 9, 4, 8), torch.randn(2, 1 + 9, 16)
    p, q = compat.tnt_block_until_mlp(block, pixel, patch)
    want_p, want_q = block(pixel, patch)
    assert torch.equal(p, want_p)
    assert torch.equal(q + block.drop_path(block.mlp(block.norm_mlp(q))), want_q)


def test_tnt_block_args_are_the_ones_timm_derives():
    kwargs = dict(patch_size=16, first_stride=4, embed_dim=192, inner_dim=12, depth=12,
                  num_heads_inner=3, num_heads_outer=3, mlp_ratio=4.0, qkv_bias=False,
                  drop_path_rate=0.1, legacy=True)
    with torch.device("meta"):
        model = TNT(**kwargs)
    args = compat.tnt_block_args(**kwargs)

    def facts(b):
        return (b.attn_in.num_heads, b.attn_out.num_heads, b.proj.in_features,
                b.proj.out_features, b.mlp.fc1.out_features, b.attn_in.qk.bias is not None,
                b.legacy, b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0)

    assert len(args) == len(model.blocks)
    with torch.device("meta"):
        for got, block in zip(args, model.blocks, strict=True):
            assert facts(TNTBlock(**got)) == facts(block)


def test_our_init_is_tnts_own():
    """LocalityTNTBlock is initialised with init_vit_weights in place of TNT._init_weights."""
    blocks = []
    for init in (TNT._init_weights.__get__(object()), init_vit_weights):
        torch.manual_seed(0)
        block = TNTBlock(8, 16, num_pixel=4, num_heads_in=2, num_heads_out=2)
        block.apply(init)
        blocks.append(block.state_dict())
    assert blocks[0].keys() == blocks[1].keys()
    assert all(torch.equal(blocks[0][k], blocks[1][k]) for k in blocks[0])


def test_replace_blocks_counts_over_stages():
    stages = [torch.nn.Sequential(torch.nn.Identity(), torch.nn.Identity()),
              torch.nn.Sequential(torch.nn.Identity())]
    index = 0
    for stage in stages:
        index = compat.replace_blocks(
            stage, lambda i, old: torch.nn.ReLU() if i in (1, 2) else None, index)
    assert index == 3
    assert [type(m).__name__ for s in stages for m in s] == ["Identity", "ReLU", "ReLU"]


def test_feature_take_indices_selects_as_timms_intermediates_do():
    # None: every level; an int: the last n; a list: those levels, negatives from the end.
    assert compat.feature_take_indices(4) == ([0, 1, 2, 3], 3)
    assert compat.feature_take_indices(4, 3) == ([1, 2, 3], 3)
    assert compat.feature_take_indices(4, [0, -1]) == ([0, 3], 3)
    assert compat.feature_take_indices(12, [2, 5]) == ([2, 5], 5)
    # ...and it is what timm's own ViT takes for its intermediates.
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=8, depth=4, num_heads=2).eval()
    with torch.no_grad():
        taken = vit.forward_intermediates(torch.randn(1, 3, 16, 16), indices=[0, -1],
                                          intermediates_only=True)
    assert len(taken) == len(compat.feature_take_indices(4, [0, -1])[0]) == 2

