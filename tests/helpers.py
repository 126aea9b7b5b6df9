"""Helpers shared by the model tests: closed-form parameter counts of the blocks the paper
describes (docs/paper.md sections 2 and 3) and the train-step check of a built model."""

import math

import torch


def eca_kernel(channels: int) -> int:
    """ECA-Net's adaptive rule (docs/paper.md section 2): t = int(|(log2 C + 1) / 2|), made odd;
    5 for every hidden width 192 ... 1152 of the LocalViT-T ablation."""
    t = int(abs((math.log2(channels) + 1) / 2))
    return t if t % 2 else t + 1


def linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def ffn_params(dim: int, expansion: int = 4, se_hidden: int = 4, act: str = "hs+se",
               dw_conv: bool = True) -> int:
    """The locality FFN: 1x1 conv (no bias) + BN, 3x3 depth-wise conv (no bias) + BN, SE (with
    biases) or ECA (no bias) by `act`, 1x1 conv (no bias) + BN; BN has a weight and a bias."""
    hidden = expansion * dim
    n = dim * hidden + 2 * hidden + hidden * dim + 2 * dim
    if dw_conv:
        n += 9 * hidden + 2 * hidden
    if act == "hs+se":
        n += linear(hidden, se_hidden) + linear(se_hidden, hidden)
    elif act in ("hs+eca", "hs+ecah"):
        n += eca_kernel(hidden)
    return n


def mlp_params(dim: int, ratio: float = 4) -> int:
    """LayerNorm + GELU MLP with biases: what the locality FFN replaces."""
    hidden = int(dim * ratio)
    return 2 * dim + linear(dim, hidden) + linear(hidden, dim)


def check_trains(model: torch.nn.Module, x: torch.Tensor, classes: int) -> None:
    """One train-mode forward/backward: right logits shape, finite values, and a finite gradient
    on every trainable parameter (frozen ones, such as T2T's tables, get none)."""
    model.train()
    out = model(x)
    assert out.shape == (x.shape[0], classes)
    assert torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, torch.arange(x.shape[0]) % classes).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        else:
            assert p.grad is None
