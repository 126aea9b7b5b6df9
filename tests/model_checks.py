"""Checks shared by the hand-written backbones' tests (PVT, T2T-ViT)."""

import torch


def check_trains(model: torch.nn.Module, x: torch.Tensor, classes: int) -> None:
    """One train-mode forward/backward: right logits shape, finite values, and a finite gradient
    on every trainable parameter (frozen ones, such as T2T's tables, get none)."""
    model.train()
    out = model(x)
    assert out.shape == (x.shape[0], classes)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        else:
            assert p.grad is None
