"""PVT v1 and LocalViT-PVT: exact parameter counts, forward/backward, class-token bypass, layers."""

import pytest
import torch

from helpers import check_trains, ffn_params, linear, mlp_params
from trainers.backbones.pvt import PVT_ARCHS, PVTArch, build_pvt, check_pvt_img_size, pvt_depth
from trainers.config import ModelConfigError
from trainers.locality import LocalitySpec

TINY = PVT_ARCHS["pvt_tiny"]
MICRO = PVT_ARCHS["pvt_micro"]
# LocalViT-PVT: gamma = each stage's MLP ratio, SE hidden = gamma.
LOCAL = LocalitySpec(act="hs+se", expansion="mlp_ratio", reduction="dim")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pvt_params(patches, dims, ratios, depths, srs, grid0, classes=1000, in_chans=3,
               gammas=None, local_blocks=None) -> int:
    """Closed form of the authors' PVT v1 (docs/paper.md section 3, "Details ...")."""
    total, width, side, index = 0, in_chans, grid0, 0
    for s, (p, d, r, depth, sr) in enumerate(zip(patches, dims, ratios, depths, srs, strict=True)):
        side //= p
        last = s == len(dims) - 1
        total += width * d * p * p + d + 2 * d  # patch conv (bias) + LayerNorm
        total += (side * side + int(last)) * d  # position embedding (+ class-token slot)
        for _ in range(depth):
            total += 2 * d + linear(d, d) + linear(d, 2 * d) + linear(d, d)  # norm1, q, kv, proj
            if sr > 1:
                total += d * d * sr * sr + d + 2 * d  # SR conv (bias) + LayerNorm
            if local_blocks is not None and index in local_blocks:
                g = gammas[s]
                total += ffn_params(d, g, g)  # reduction = dim: SE hidden = gamma
            else:
                total += mlp_params(d, r)
            index += 1
        width = d
    return total + width + 2 * width + linear(width, classes)  # cls token, final LN, head


TINY_FORMULA = dict(patches=(4, 2, 2, 2), dims=(64, 128, 320, 512), ratios=(8, 8, 4, 4),
                    depths=(2, 2, 2, 2), srs=(8, 4, 2, 1), grid0=224)


def test_tiny_row_is_the_papers():
    assert (TINY.patch_sizes, TINY.embed_dims, TINY.num_heads, TINY.mlp_ratios, TINY.depths,
            TINY.sr_ratios) == ((4, 2, 2, 2), (64, 128, 320, 512), (1, 2, 5, 8), (8, 8, 4, 4),
                                (2, 2, 2, 2), (8, 4, 2, 1))
    assert TINY.qkv_bias and TINY.norm_eps == 1e-6 and TINY.img_size == 224


def test_tiny_parameter_counts_match_the_authors():
    plain = n_params(build_pvt(TINY))
    local = n_params(build_pvt(TINY, locality=LOCAL))
    assert plain == pvt_params(**TINY_FORMULA) == 13_229_288
    assert local == pvt_params(**TINY_FORMULA, gammas=(8, 8, 4, 4),
                               local_blocks=set(range(8))) == 13_456_152
    assert (round(plain / 1e6, 1), round(local / 1e6, 1)) == (13.2, 13.5)  # paper, Table 5


def test_an_integer_expansion_is_one_gamma_everywhere():
    spec = LocalitySpec(act="hs+se", expansion=2, reduction="dim")
    model = build_pvt(MICRO, locality=spec, num_classes=10)
    micro = dict(patches=MICRO.patch_sizes, dims=MICRO.embed_dims, ratios=MICRO.mlp_ratios,
                 depths=MICRO.depths, srs=MICRO.sr_ratios, grid0=32, classes=10)
    assert n_params(model) == pvt_params(**micro, gammas=(2, 2, 2, 2), local_blocks={0, 1, 2, 3})
    with pytest.raises(ModelConfigError, match="expansion"):
        LocalitySpec(expansion="stage")


@pytest.mark.parametrize("locality", [None, LOCAL], ids=["pvt_micro", "localvit_pvt_micro"])
def test_micro_forward_backward(locality):
    torch.manual_seed(0)
    model = build_pvt(MICRO, locality=locality, num_classes=10, drop_path_rate=0.1)
    check_trains(model, torch.randn(2, 3, 32, 32), 10)


def test_non_square_input():
    torch.manual_seed(0)
    model = build_pvt(MICRO, locality=LOCAL, num_classes=5, img_size=(16, 48))
    assert [s.grid for s in model.stages] == [(8, 24), (4, 12), (2, 6), (1, 3)]
    check_trains(model, torch.randn(2, 3, 16, 48), 5)


def test_class_token_bypasses_the_locality_ffn():
    torch.manual_seed(0)
    model = build_pvt(MICRO, locality=LOCAL, num_classes=10).eval()
    seen = {}
    ffn = model.stages[-1].blocks[-1].ffn
    ffn.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(seen["y"][:, 0], seen["x"][:, 0])  # class token unchanged
    assert not torch.allclose(seen["y"][:, 1:], seen["x"][:, 1:])  # patch tokens changed


def test_layer_selection_counts_blocks_across_stages():
    assert pvt_depth(TINY) == 8 and pvt_depth(MICRO) == 4
    spec = LocalitySpec(expansion="mlp_ratio", reduction="dim", layers="2-3")
    model = build_pvt(MICRO, locality=spec, num_classes=10)
    blocks = [b for stage in model.stages for b in stage.blocks]
    assert [hasattr(b, "ffn") for b in blocks] == [False, True, True, False]
    assert [hasattr(b, "mlp") for b in blocks] == [True, False, False, True]
    micro = dict(patches=MICRO.patch_sizes, dims=MICRO.embed_dims, ratios=MICRO.mlp_ratios,
                 depths=MICRO.depths, srs=MICRO.sr_ratios, grid0=32, classes=10)
    assert n_params(model) == pvt_params(**micro, gammas=MICRO.mlp_ratios, local_blocks={1, 2})
    with pytest.raises(ModelConfigError, match="4 blocks"):
        build_pvt(MICRO, locality=LocalitySpec(layers="1-5"))


def test_drop_path_on_attention_only_in_locality_blocks():
    spec = LocalitySpec(expansion="mlp_ratio", reduction="dim", layers="4")
    model = build_pvt(MICRO, locality=spec, drop_path_rate=0.3)
    blocks = [b for stage in model.stages for b in stage.blocks]
    assert [type(b.drop_path).__name__ for b in blocks] == ["Identity", "DropPath", "DropPath",
                                                            "DropPath"]
    torch.manual_seed(0)
    last = blocks[-1].train()
    x = torch.randn(4, 1 + 4, MICRO.embed_dims[-1])
    # With attention dropped for a sample, only the locality FFN acts on it: its class token
    # comes back exactly as it went in.
    blocks[-1].drop_path.drop_prob = 1.0
    assert torch.equal(last(x, (2, 2), 1)[:, 0], x[:, 0])


def test_image_size_checks():
    assert check_pvt_img_size(TINY, 224) == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert check_pvt_img_size(MICRO, (16, 32)) == [(8, 16), (4, 8), (2, 4), (1, 2)]
    for bad in (48, 16, (224, 200)):
        with pytest.raises(ModelConfigError, match="multiples of 32"):
            check_pvt_img_size(TINY, bad)
    with pytest.raises(ModelConfigError, match="at least 16 px"):
        build_pvt(MICRO, img_size=8)
    model = build_pvt(MICRO, num_classes=3)
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 64, 64))


def test_bad_arch_rows_are_rejected():
    with pytest.raises(ModelConfigError, match="one entry per stage"):
        PVTArch((4, 2), (64, 128), (1, 2), (8, 8), (2, 2), (8,))
    with pytest.raises(ModelConfigError, match="divisible"):
        PVTArch((4,), (64,), (3,), (8,), (2,), (8,))


@pytest.mark.slow
@pytest.mark.parametrize("locality,macs", [(None, 1.933), (LOCAL, 1.979)],
                         ids=["pvt_tiny", "localvit_pvt_tiny"])
def test_tiny_224_forward_backward_and_macs(locality, macs):
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = build_pvt(TINY, locality=locality)
    check_trains(model, torch.randn(2, 3, 224, 224), 1000)
    model.eval()
    for module in model.modules():  # count the attention matmuls (CPU SDPA has no formula)
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 224, 224))
    assert counter.get_total_flops() / 2 / 1e9 == pytest.approx(macs, abs=0.001)
