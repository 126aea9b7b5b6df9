"""T2T-ViT and LocalViT-T2T: exact parameter counts, the Performer kernel, locality placement."""

import math

import pytest
import torch

from helpers import check_trains, ffn_params, linear
from trainers.backbones.t2t import (
    T2T_ARCHS,
    PerformerTokenLayer,
    T2TArch,
    build_t2t,
    check_t2t_img_size,
    t2t_depth,
)
from trainers.config import ModelConfigError
from trainers.locality import LocalitySpec
from trainers.profile import count_params

T2T7 = T2T_ARCHS["t2t_vit_7"]
MICRO = T2T_ARCHS["t2t_vit_micro"]
BLOCK_LOCAL = LocalitySpec(act="hs+se", expansion=2, reduction=128)  # LocalViT-T2T backbone
TOKEN_LOCAL = LocalitySpec(act="hs", expansion=1)  # LocalViT-T2T token layers


def n_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """The authors' count (their fixed tensors, buffers here, included) or the trainable one."""
    if trainable_only:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    return count_params(model)


def t2t_params(*, embed, depth, mlp, token_dim, kernels, n_tokens, in_chans=3, classes=1000,
               block_local=None, token_local=False) -> tuple[int, int]:
    """Closed form of the authors' T2T-ViT (docs/paper.md section 3): (all, frozen)."""
    frozen = 0
    total, width = 0, in_chans
    for kernel in kernels[:-1]:  # Performer token layers
        in_dim = width * kernel * kernel
        m = token_dim // 2  # kernel ratio 0.5
        total += 2 * in_dim + linear(in_dim, 3 * token_dim) + linear(token_dim, token_dim)
        total += m * token_dim  # frozen random projection
        frozen += m * token_dim
        if token_local:  # gamma 1, h-swish, no SE; the unused LayerNorm(64) is not created
            total += ffn_params(token_dim, 1, act="hs")
        else:
            total += 2 * token_dim + 2 * linear(token_dim, token_dim)
        width = token_dim
    total += linear(token_dim * kernels[-1] ** 2, embed)  # project
    total += embed + (n_tokens + 1) * embed  # class token + frozen sinusoid position embedding
    frozen += (n_tokens + 1) * embed
    for _ in range(depth):
        total += 2 * embed + 3 * embed * embed + linear(embed, embed)  # norm1, qkv (no bias), proj
        if block_local is None:
            total += 2 * embed + linear(embed, mlp * embed) + linear(mlp * embed, embed)
        else:
            total += ffn_params(embed, *block_local)
    total += 2 * embed + linear(embed, classes)
    return total, frozen


T2T7_FORMULA = dict(embed=256, depth=7, mlp=2, token_dim=64, kernels=(7, 3, 3), n_tokens=196)


def test_t2t7_row_is_the_papers():
    assert (T2T7.embed_dim, T2T7.depth, T2T7.num_heads, T2T7.mlp_ratio, T2T7.token_dim,
            T2T7.kernel_ratio) == (256, 7, 4, 2.0, 64, 0.5)
    assert T2T7.soft_splits == ((7, 4, 2), (3, 2, 1), (3, 2, 1))
    assert not T2T7.qkv_bias and T2T7.norm_eps == 1e-5


def test_parameter_counts_match_the_authors():
    plain = build_t2t(T2T7)
    local = build_t2t(T2T7, locality=BLOCK_LOCAL, token_locality=TOKEN_LOCAL)
    total, frozen = t2t_params(**T2T7_FORMULA)
    assert n_params(plain) == total == 4_310_222
    frozen_count = n_params(plain) - n_params(plain, trainable_only=True)
    assert frozen_count == frozen == 197 * 256 + 2 * 32 * 64  # position embedding, projections
    local_total, _ = t2t_params(**T2T7_FORMULA, block_local=(2, 4), token_local=True)
    # The authors' LocalViT-T2T has 4,385,386: two dead LayerNorm(64) more (2 x 128).
    assert n_params(local) == local_total == 4_385_386 - 256
    # The paper's 4.3 M / 4.3 M count trainable parameters (the authors' main.py counts
    # requires_grad only); with the frozen ones LocalViT-T2T is 4.39 M.
    assert round(n_params(plain, trainable_only=True) / 1e6, 1) == 4.3
    assert round(n_params(local, trainable_only=True) / 1e6, 1) == 4.3


def test_fixed_tensors_are_buffers_that_the_authors_count():
    model = build_t2t(MICRO, num_classes=10)
    fixed = {"pos_embed", "tokens_to_token.layers.0.random_features",
             "tokens_to_token.layers.1.random_features"}
    # Buffers, as timm keeps fixed tensors: no parameter is left without a gradient...
    assert all(p.requires_grad for p in model.parameters())
    assert fixed <= {n for n, _ in model.named_buffers()}
    assert fixed <= set(model.state_dict())  # ...and checkpoints keep them under the same keys
    # ...yet counted with the parameters, as the authors' code (parameters without grad) does.
    sizes = sum(model.get_buffer(n).numel() for n in fixed)
    assert count_params(model) == sum(p.numel() for p in model.parameters()) + sizes
    pos = model.pos_embed[0]
    dim = MICRO.embed_dim
    for p, i in [(0, 0), (1, 0), (5, 1), (17, 10), (64, 63)]:
        angle = p / 10000 ** (2 * (i // 2) / dim)
        assert pos[p, i].item() == pytest.approx(math.sin(angle) if i % 2 == 0 else math.cos(angle),
                                                 abs=1e-6)
    w = model.tokens_to_token.layers[0].random_features
    m = MICRO.token_dim // 2
    # Orthogonal rows scaled by sqrt(m).
    torch.testing.assert_close(w @ w.t(), m * torch.eye(m), atol=1e-4, rtol=0)


def test_performer_kernel_approximates_softmax_attention():
    torch.manual_seed(0)
    dim = 4
    layer = PerformerTokenLayer(3 * dim, dim, kernel_ratio=4096, drop=0.0, locality=None).eval()
    with torch.no_grad():  # make k, q, v slices of the input and proj the identity
        layer.kqv.weight.copy_(torch.eye(3 * dim))
        layer.kqv.bias.zero_()
        layer.proj.weight.copy_(torch.eye(dim))
        layer.proj.bias.zero_()
        x = 0.3 * torch.randn(2, 10, 3 * dim)
        k, q, v = x.split(dim, dim=-1)
        exact = v + torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
        # Measured error 0.0015; a 1/sqrt(2) temperature or plain averaging is >= 0.025 off.
        torch.testing.assert_close(layer.attention(x), exact, atol=0.005, rtol=0)


@pytest.mark.parametrize("block,token", [(None, None), (BLOCK_LOCAL, TOKEN_LOCAL)],
                         ids=["t2t_vit_micro", "localvit_t2t_micro"])
def test_micro_forward_backward(block, token):
    torch.manual_seed(0)
    model = build_t2t(MICRO, locality=block, token_locality=token, num_classes=10,
                      drop_path_rate=0.1)
    check_trains(model, torch.randn(2, 3, 32, 32), 10)


def test_non_square_input():
    torch.manual_seed(0)
    model = build_t2t(MICRO, locality=BLOCK_LOCAL, token_locality=TOKEN_LOCAL, num_classes=4,
                      img_size=(16, 24))
    assert model.grid == (4, 6) and model.tokens_to_token.grids == [(8, 12), (4, 6)]
    check_trains(model, torch.randn(2, 3, 16, 24), 4)


def test_locality_runs_on_the_token_grids_and_skips_the_class_token():
    torch.manual_seed(0)
    model = build_t2t(MICRO, locality=BLOCK_LOCAL, token_locality=TOKEN_LOCAL,
                      num_classes=10).eval()
    seen: dict[str, dict] = {"token0": {}, "token1": {}, "block": {}}
    model.tokens_to_token.layers[0].ffn.register_forward_hook(
        lambda m, args, out: seen["token0"].update(grid=args[1], prefix=args[2]))
    model.tokens_to_token.layers[1].ffn.register_forward_hook(
        lambda m, args, out: seen["token1"].update(grid=args[1], prefix=args[2]))
    model.blocks[-1].ffn.register_forward_hook(
        lambda m, args, out: seen["block"].update(x=args[0], y=out, prefix=args[2]))
    model(torch.randn(2, 3, 32, 32))
    assert seen["token0"] == {"grid": (16, 16), "prefix": 0}
    assert seen["token1"] == {"grid": (8, 8), "prefix": 0}
    assert seen["block"]["prefix"] == 1
    assert torch.equal(seen["block"]["y"][:, 0], seen["block"]["x"][:, 0])
    assert not torch.allclose(seen["block"]["y"][:, 1:], seen["block"]["x"][:, 1:])
    # At 224 px the token layers see the paper's 56x56 and 28x28 grids, the backbone 14x14.
    assert check_t2t_img_size(T2T7, 224) == [(56, 56), (28, 28), (14, 14)]


def test_layer_selection():
    assert t2t_depth(T2T7) == 7 and t2t_depth(MICRO) == 4
    model = build_t2t(MICRO, locality=LocalitySpec(expansion=2, reduction=4, layers="1-2"),
                      token_locality=LocalitySpec(act="hs", expansion=1, layers=(2,)))
    assert [hasattr(b, "ffn") for b in model.blocks] == [True, True, False, False]
    assert [hasattr(t, "ffn") for t in model.tokens_to_token.layers] == [False, True]
    assert [hasattr(t, "mlp") for t in model.tokens_to_token.layers] == [True, False]
    with pytest.raises(ModelConfigError, match="4 blocks"):
        build_t2t(MICRO, locality=LocalitySpec(layers="1-5"))
    with pytest.raises(ModelConfigError, match="2 blocks"):
        build_t2t(MICRO, token_locality=LocalitySpec(layers="3"))


def test_image_size_checks():
    assert check_t2t_img_size(MICRO, 8) == [(4, 4), (2, 2), (2, 2)]
    with pytest.raises(ModelConfigError, match="at least 3 px"):
        check_t2t_img_size(T2T7, 2)
    with pytest.raises(ModelConfigError, match="leave no tokens"):
        build_t2t(T2T7, img_size=(224, 2))
    model = build_t2t(MICRO, num_classes=3)
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 16, 16))


def test_bad_arch_rows_are_rejected():
    with pytest.raises(ModelConfigError, match="divisible"):
        T2TArch(embed_dim=100, depth=2, num_heads=3, mlp_ratio=2.0)
    with pytest.raises(ModelConfigError, match="soft_splits"):
        T2TArch(embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0, soft_splits=((3, 2, 1),))


@pytest.mark.slow
@pytest.mark.parametrize("block,token,macs",
                         [(None, None, 1.147), (BLOCK_LOCAL, TOKEN_LOCAL, 1.154)],
                         ids=["t2t_vit_7", "localvit_t2t_7"])
def test_224_forward_backward_and_macs(block, token, macs):
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = build_t2t(T2T7, locality=block, token_locality=token)
    check_trains(model, torch.randn(2, 3, 224, 224), 1000)
    model.eval()
    for module in model.modules():  # count the attention matmuls (CPU SDPA has no formula)
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 224, 224))
    assert counter.get_total_flops() / 2 / 1e9 == pytest.approx(macs, abs=0.001)
