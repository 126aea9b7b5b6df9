"""The locality FFN block on its own: shapes, prefix tokens, grids, knobs and their parameter
counts."""


import pytest
import torch

from helpers import eca_kernel, ffn_params
from trainers.config import ModelConfigError
from trainers.locality import (
    ACTIVATIONS,
    ECA,
    LocalityFeedForward,
    LocalitySpec,
    merge_locality,
    resolve_layers,
)


@pytest.mark.parametrize("channels,kernel", [(192, 5), (384, 5), (576, 5), (768, 5), (1152, 5),
                                             (64, 3), (16, 3)])
def test_eca_kernel_follows_the_adaptive_rule(channels, kernel):
    # 192 ... 1152 are the hidden widths of the LocalViT-T ablation (gamma 1 ... 6 on dim 192).
    assert eca_kernel(channels) == kernel
    spec = LocalitySpec(act="hs+eca", expansion=1, reduction=1)
    eca = next(m for m in LocalityFeedForward(channels, spec).modules() if isinstance(m, ECA))
    assert eca.conv.kernel_size == (kernel,) and eca.conv.padding == (kernel // 2,)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("expansion,reduction", [(1, 48), (4, 192), (4, 4), (6, 24)])
@pytest.mark.parametrize("dw_conv", [True, False])
def test_parameter_count_matches_closed_form(act, expansion, reduction, dw_conv):
    spec = LocalitySpec(act=act, expansion=expansion, reduction=reduction, dw_conv=dw_conv)
    block = LocalityFeedForward(192, spec)
    got = sum(p.numel() for p in block.parameters())
    assert got == ffn_params(192, expansion, expansion * 192 // reduction, act, dw_conv)


def test_deit_tiny_block_difference_is_the_papers():
    # LocalViT-T (5,908,696) - DeiT-T (5,717,416) = 12 blocks x (locality FFN - (LN2 + MLP)).
    ffn = sum(p.numel() for p in LocalityFeedForward(192, LocalitySpec(reduction=192)).parameters())
    mlp = 2 * 192 + (192 * 768 + 768) + (768 * 192 + 192)
    assert 12 * (ffn - mlp) == 5_908_696 - 5_717_416


def test_relative_reduction_rules():
    assert LocalitySpec(expansion=8, reduction="dim").se_hidden(64) == 8
    assert LocalitySpec(expansion=4, reduction="dim/4").se_hidden(96) == 16
    with pytest.raises(ModelConfigError, match="reduction"):
        LocalitySpec(reduction="half")


def test_prefix_tokens_bypass_and_shapes():
    # Shapes only; the values, the residual included, are checked in test_locality_reference.py.
    torch.manual_seed(0)
    block = LocalityFeedForward(16, LocalitySpec(act="hs+se", expansion=2, reduction=4))
    x = torch.randn(3, 2 + 4 * 4, 16)
    y = block(x, (4, 4), num_prefix_tokens=2)
    assert y.shape == x.shape
    assert torch.equal(y[:, :2], x[:, :2])
    assert not torch.allclose(y[:, 2:], x[:, 2:])


def test_non_square_grid_keeps_spatial_layout():
    torch.manual_seed(0)
    block = LocalityFeedForward(8, LocalitySpec(act="relu6", expansion=1, reduction=1)).eval()
    h, w = 3, 7
    x = torch.zeros(1, h * w, 8)
    y = block(x, (h, w))
    # Perturbing one token may only change that token and its 3x3 neighbours: the row-major
    # order of a 3x7 grid is respected (a sqrt(N) guess could not even reshape 21 tokens).
    x2 = x.clone()
    x2[0, 1 * w + 3] = torch.linspace(-2.0, 2.0, 8)
    changed = (block(x2, (h, w)) - y).abs().sum(-1)[0].reshape(h, w) > 1e-6
    neighbourhood = torch.zeros(h, w, dtype=torch.bool)
    neighbourhood[0:3, 2:5] = True
    assert not (changed & ~neighbourhood).any()
    assert changed[1, 3] and changed.sum() > 1


def test_grid_mismatch_is_caught():
    block = LocalityFeedForward(8, LocalitySpec(expansion=1, reduction=1))
    with pytest.raises(AssertionError, match="grid"):
        block(torch.randn(1, 10, 8), (3, 3))


def test_every_parameter_gets_a_gradient():
    for act in ACTIVATIONS:
        block = LocalityFeedForward(8, LocalitySpec(act=act, expansion=2, reduction=2))
        block(torch.randn(2, 1 + 9, 8), (3, 3), 1).square().sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


@pytest.mark.parametrize("layers,depth,expected", [
    ("all", 12, set(range(12))), ("1-4", 12, {0, 1, 2, 3}), ("9-12", 12, {8, 9, 10, 11}),
    ([1, 5], 12, {0, 4}), (3, 4, {2}), ("1,2", 4, {0, 1}),
])
def test_resolve_layers(layers, depth, expected):
    assert resolve_layers(layers, depth) == expected


@pytest.mark.parametrize("layers", ["0-4", "1-13", "5-2", [13], [], "first", True])
def test_resolve_layers_rejects_outside_the_model(layers):
    with pytest.raises(ModelConfigError, match="1..12"):
        resolve_layers(layers, 12)


def test_unknown_activation_lists_choices():
    with pytest.raises(ModelConfigError, match="relu6, hs, hs\\+se, hs\\+eca, hs\\+ecah"):
        LocalitySpec(act="gelu")


def test_merge_locality_semantics():
    family = LocalitySpec(reduction=192)
    variant = LocalitySpec(reduction=192, act="hs")
    assert merge_locality(family, variant, "default") is variant
    assert merge_locality(family, None, "default") is None
    assert merge_locality(family, variant, None) is None
    assert merge_locality(family, None, {"act": "relu6"}) == LocalitySpec(act="relu6",
                                                                          reduction=192)
    assert merge_locality(family, variant, {"layers": [1, 2]}).layers == (1, 2)
    with pytest.raises(ModelConfigError, match="valid knobs"):
        merge_locality(family, None, {"gamma": 2})
