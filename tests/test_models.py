"""Every registered model trains: forward, backward, no NaN, a gradient for every parameter; plus
the zero point (locality off is exactly timm), prefix tokens, non-square grids, block selection."""

import pytest
import timm
import torch
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.tnt import TNT
from timm.models.vision_transformer import Block

from helpers import check_trains
from trainers import registry
from trainers.backbones.deit import LocalityBlock
from trainers.backbones.swin import LocalitySwinBlock
from trainers.backbones.tnt import LocalityTNTBlock

SMALL = [n for n in registry.list_models() if registry.default_img_size(n) <= 32]
PAPER = [n for n in registry.list_models() if n not in SMALL]


def _train_step(model, img_size, batch=2, num_classes=10):
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    check_trains(model, torch.randn(batch, 3, height, width), num_classes)


@pytest.mark.parametrize("name", SMALL)
def test_small_variant_trains(name):
    torch.manual_seed(0)
    model = registry.create_model(name, num_classes=10, drop_path_rate=0.1)
    _train_step(model, registry.default_img_size(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_paper_model_trains_at_224(name):
    torch.manual_seed(0)
    _train_step(registry.create_model(name, num_classes=10), 224)


def _same_outputs(ours, theirs, img_size):
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_zero_point_deit_is_timm():
    ours = registry.create_model("deit_tiny", img_size=32)
    assert all(type(b) is Block for b in ours.blocks)
    _same_outputs(ours, timm.create_model("deit_tiny_patch16_224", img_size=32), 32)


def test_zero_point_swin_is_timm():
    # Swin-T with shallower stages keeps the test quick; every code path is the same.
    ours = registry.create_model("swin_tiny", img_size=64, depths=(2, 2, 2, 2))
    assert all(type(b) is SwinTransformerBlock for s in ours.layers for b in s.blocks)
    theirs = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, depths=(2, 2, 2, 2))
    _same_outputs(ours, theirs, 64)


def test_zero_point_tnt_is_timm():
    ours = registry.create_model("tnt_tiny", img_size=32)
    theirs = TNT(img_size=32, patch_size=16, embed_dim=192, inner_dim=12, depth=12,
                 num_heads_outer=3, num_heads_inner=3, qkv_bias=False, legacy=True)
    _same_outputs(ours, theirs, 32)


def test_unselected_blocks_are_exactly_timm_blocks():
    torch.manual_seed(0)
    local = registry.create_model("deit_tiny", locality={"layers": "1-4"}, img_size=32)
    kinds = [type(b) for b in local.blocks]
    assert kinds == [LocalityBlock] * 4 + [Block] * 8
    plain = registry.create_model("deit_tiny", img_size=32)
    plain.blocks[6].load_state_dict(local.blocks[6].state_dict())
    x = torch.randn(2, 5, 192)
    with torch.no_grad():
        assert torch.equal(local.blocks[6](x), plain.blocks[6](x))
    assert not hasattr(local.blocks[0], "norm2") and not hasattr(local.blocks[0], "mlp")


def test_layers_count_over_swin_stages_in_forward_order():
    model = registry.create_model("swin_micro", locality={"layers": [2, 3]})
    kinds = [type(b) for s in model.layers for b in s.blocks]
    assert kinds == [SwinTransformerBlock, LocalitySwinBlock, LocalitySwinBlock,
                     SwinTransformerBlock]


def test_tnt_inner_blocks_keep_their_mlp():
    model = registry.create_model("localvit_tnt_micro")
    block = model.blocks[0]
    assert isinstance(block, LocalityTNTBlock)
    assert hasattr(block, "mlp_in") and not hasattr(block, "mlp")


@pytest.mark.parametrize("name,block_path", [("localvit_micro", "blocks.0"),
                                             ("localvit_tnt_micro", "blocks.1")])
def test_prefix_tokens_bypass_the_ffn(name, block_path):
    model = registry.create_model(name).train()
    ffn = model.get_submodule(block_path).ffn
    seen = {}
    ffn.register_forward_hook(lambda m, args, out: seen.update(inp=args[0], out=out))
    size = registry.default_img_size(name)
    model(torch.randn(2, 3, size, size))
    assert torch.equal(seen["out"][:, 0], seen["inp"][:, 0])
    assert not torch.equal(seen["out"][:, 1:], seen["inp"][:, 1:])


@pytest.mark.parametrize("name,size,grid", [
    ("localvit_micro", (16, 24), (4, 6)),
    ("localvit_tnt_micro", (32, 16), (4, 2)),
    ("localvit_swin_micro", (32, 24), None),
])
def test_non_square_grids(name, size, grid):
    torch.manual_seed(0)
    model = registry.create_model(name, num_classes=10, img_size=size)
    if grid is not None:
        assert model.blocks[0].grid == grid
    _train_step(model, size)


def test_drop_path_only_on_attention_branch():
    block = registry.create_model("localvit_micro", drop_path_rate=0.5).blocks[-1]
    assert block.drop_path1.drop_prob == pytest.approx(0.5)  # the last block gets the full rate
    assert not hasattr(block, "drop_path2")
