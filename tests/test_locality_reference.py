"""The locality FFN's values against a hand-written reference computation (docs/paper.md section 2).

`reference_ffn` below is written from the paper's description with plain functional ops, never
from trainers/locality.py: prefix tokens split off, Seq2Img (row-major grid), 1x1 conv -> BN ->
act -> 3x3 depth-wise conv -> BN -> act -> SE / ECA -> 1x1 conv -> BN, the block's own residual,
Img2Seq, prefix tokens put back. The block under test gets random (seeded) weights, BatchNorm
affine parameters and running statistics, so that a dropped residual, a moved SE, a missing
activation or a wrong gate changes the output by far more than the float64 tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import eca_kernel
from trainers.locality import ACTIVATIONS, LocalityFeedForward, LocalitySpec

DIM, EXPANSION, REDUCTION = 32, 4, 16
HIDDEN = EXPANSION * DIM            # 128 channels: ECA-Net's rule gives a kernel of 5
SE_HIDDEN = HIDDEN // REDUCTION     # 8
GRID = (3, 4)                       # non-square on purpose
BN_EPS, BN_MOMENTUM = 1e-5, 0.1     # torch's BatchNorm2d defaults, as in the authors' code


def _act(act: str):
    return F.relu6 if act == "relu6" else F.hardswish


def _bn(x, bn, training):
    """BatchNorm2d written out; in training mode it also updates the given running stats."""
    return F.batch_norm(x, bn["mean"], bn["var"], bn["weight"], bn["bias"], training=training,
                        momentum=BN_MOMENTUM, eps=BN_EPS)


def reference_ffn(x, w, *, act, dw_conv, grid, num_prefix, training=True):
    prefix, tokens = x[:, :num_prefix], x[:, num_prefix:]
    b, _, c = tokens.shape
    h, wd = grid
    img = tokens.reshape(b, h, wd, c).permute(0, 3, 1, 2)          # token r*W + q -> pixel (r, q)
    y = _act(act)(_bn(F.conv2d(img, w["expand"]), w["bn_expand"], training))
    if dw_conv:
        y = F.conv2d(y, w["dw"], padding=1, groups=HIDDEN)
        y = _act(act)(_bn(y, w["bn_dw"], training))
    if act == "hs+se":
        s = y.mean(dim=(2, 3))
        s = F.relu(F.linear(s, w["fc1"], w["fc1_bias"]))
        s = F.hardsigmoid(F.linear(s, w["fc2"], w["fc2_bias"]))
        y = y * s[:, :, None, None]
    elif act in ("hs+eca", "hs+ecah"):
        k = w["eca"].shape[-1]
        s = F.conv1d(y.mean(dim=(2, 3))[:, None, :], w["eca"], padding=k // 2)[:, 0]
        s = F.hardsigmoid(s) if act == "hs+ecah" else torch.sigmoid(s)
        y = y * s[:, :, None, None]
    y = _bn(F.conv2d(y, w["project"]), w["bn_project"], training)
    out = img + y                                                   # the block's own residual
    tokens = out.permute(0, 2, 3, 1).reshape(b, h * wd, c)
    return torch.cat([prefix, tokens], dim=1)


def _one(items, what):
    assert len(items) == 1, f"expected exactly one {what}, found {len(items)}"
    return items[0]


def _bn_state(bn):
    return {"weight": bn.weight, "bias": bn.bias, "mean": bn.running_mean, "var": bn.running_var}


def weights_by_role(block, act, dw_conv):
    """The block's tensors by their role in docs/paper.md, found by shape (not by module order or
    name), with a check that the block holds exactly these layers and nothing else."""
    convs = [m for m in block.modules() if type(m) is nn.Conv2d]
    bns = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
    conv1d = [m for m in block.modules() if isinstance(m, nn.Conv1d)]
    assert len(convs) == 2 + dw_conv and len(bns) == 2 + dw_conv
    assert len(linears) == (2 if act == "hs+se" else 0)
    assert len(conv1d) == (1 if act in ("hs+eca", "hs+ecah") else 0)
    assert all(m.bias is None for m in convs + conv1d), "the convolutions have no bias"
    expand = _one([m for m in convs if m.weight.shape == (HIDDEN, DIM, 1, 1)], "1x1 expand conv")
    project = _one([m for m in convs if m.weight.shape == (DIM, HIDDEN, 1, 1)], "1x1 projection")
    hidden_bns = [m for m in bns if m.num_features == HIDDEN]
    w = {"expand": expand.weight, "project": project.weight,
         "bn_expand": _bn_state(hidden_bns[0]),
         "bn_project": _bn_state(_one([m for m in bns if m.num_features == DIM], "BN(dim)"))}
    if dw_conv:
        dw = _one([m for m in convs if m.groups == HIDDEN], "depth-wise conv")
        assert dw.weight.shape == (HIDDEN, 1, 3, 3) and dw.padding == (1, 1)
        w["dw"], w["bn_dw"] = dw.weight, _bn_state(hidden_bns[1])
    if act == "hs+se":
        fc1 = _one([m for m in linears if m.weight.shape == (SE_HIDDEN, HIDDEN)], "SE fc1")
        fc2 = _one([m for m in linears if m.weight.shape == (HIDDEN, SE_HIDDEN)], "SE fc2")
        w.update(fc1=fc1.weight, fc1_bias=fc1.bias, fc2=fc2.weight, fc2_bias=fc2.bias)
    if conv1d:
        w["eca"] = conv1d[0].weight
        assert w["eca"].shape == (1, 1, eca_kernel(HIDDEN))
    return w


def make_block(act, dw_conv, seed=0):
    spec = LocalitySpec(act=act, expansion=EXPANSION, reduction=REDUCTION, dw_conv=dw_conv)
    block = LocalityFeedForward(DIM, spec, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(block.named_parameters()) + sorted(block.named_buffers()):
            if not t.is_floating_point():
                continue
            r = torch.randn(t.shape, generator=gen, dtype=t.dtype)
            if name.endswith("running_var"):
                t.copy_(0.5 + r.abs())
            elif t.dim() == 1:      # BN weights / biases, SE biases: away from 1 and 0
                t.copy_(1.0 + 0.5 * r if name.endswith("weight") else 0.5 * r)
            else:
                t.copy_(r / math.sqrt(t[0].numel()))
    return block


def clone_weights(w):
    return {k: ({kk: vv.detach().clone() for kk, vv in v.items()} if isinstance(v, dict)
                else v.detach().clone()) for k, v in w.items()}


CASES = [(act, dw, prefix) for act in ACTIVATIONS for dw in (True, False) for prefix in (0, 2)]


@pytest.mark.parametrize("act,dw_conv,num_prefix", CASES)
def test_train_mode_output_and_running_stats_match_the_reference(act, dw_conv, num_prefix):
    block = make_block(act, dw_conv).train()
    w = clone_weights(weights_by_role(block, act, dw_conv))
    x = torch.randn(3, num_prefix + GRID[0] * GRID[1], DIM,
                    generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2.0
    got = block(x, GRID, num_prefix)
    want = reference_ffn(x, w, act=act, dw_conv=dw_conv, grid=GRID, num_prefix=num_prefix)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert torch.equal(got[:, :num_prefix], x[:, :num_prefix])     # prefix tokens bypass
    # The forward also moved every BatchNorm's running statistics exactly as the reference did.
    after = weights_by_role(block, act, dw_conv)
    for role in [k for k in w if k.startswith("bn_")]:
        for stat in ("mean", "var"):
            torch.testing.assert_close(after[role][stat], w[role][stat], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_eval_mode_uses_the_running_statistics(act):
    block = make_block(act, True, seed=3).eval()
    w = clone_weights(weights_by_role(block, act, True))
    x = torch.randn(2, 1 + GRID[0] * GRID[1], DIM, generator=torch.Generator().manual_seed(4),
                    dtype=torch.float64)
    with torch.no_grad():
        got = block(x, GRID, 1)
    want = reference_ffn(x, w, act=act, dw_conv=True, grid=GRID, num_prefix=1, training=False)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)



def test_deit_locality_block_is_attention_then_the_ffn_without_layernorm():
    # docs/paper.md section 2: norm2 is removed; the FFN (with its own residual) takes the output of
    # the attention branch, class token first.
    from trainers import registry

    torch.manual_seed(0)
    model = registry.create_model("localvit_micro", img_size=(16, 12)).eval()
    block = model.blocks[1]
    x = torch.randn(2, 1 + 4 * 3, 64)
    with torch.no_grad():
        after_attn = x + block.attn(block.norm1(x))
        want = block.ffn(after_attn, (4, 3), 1)
        torch.testing.assert_close(block(x), want, rtol=0, atol=0)
