"""Parameters, MACs and training throughput of registry models; `python -m trainers.profile`.

What is counted:
- params: every tensor of `model.parameters()`, frozen ones included (T2T's random features and
  sinusoid table), BatchNorm running statistics excluded.
- MACs: one per multiply-add of every linear layer, convolution (depth-wise included) and matrix
  product, attention's Q.K^T and A.V included, for one image in eval mode; counted with
  `torch.utils.flop_counter` (FLOPs / 2). Normalisation, activations, softmax, pooling, the SE gate
  and additions are not counted, as in the usual tables. The paper's own counter treats PVT's
  attention as full N x N, so its PVT figures are about 2.8 G above a standard count.
- images/s: forward + backward (cross-entropy on random labels) in train mode, median step time.

Usage: python -m trainers.profile localvit_tiny deit_tiny [--set locality.act=relu6
       --set locality.layers=1-4 --set arch.mlp_ratio=6] [--img-size N] [--json] [--no-speed]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["MACS_COUNTED", "count_macs", "count_params", "count_trainable_params", "main",
           "make_train_step", "measure_images_per_s"]

MACS_COUNTED = ("MACs = FLOPs/2 of every linear, conv (depth-wise included) and matmul "
                "(attention included), one image, eval mode; norms, activations, softmax not "
                "counted")


def count_params(model: nn.Module) -> int:
    """All of `model.parameters()` (frozen ones included; BatchNorm buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_trainable_params(model: nn.Module) -> int:
    """Parameters with requires_grad: what the authors' training script prints and the paper's
    table reports (it differs from count_params only for T2T's frozen tables)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _sdpa_macs_as_flops(query_shape, key_shape, value_shape, *args: Any, out_shape=None,
                        **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the CPU flash kernel that
# F.scaled_dot_product_attention dispatches to on CPU; without this, attention counts as zero.
_CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_macs_as_flops}


def _input(model: nn.Module, img_size: int | Sequence[int], in_chans: int, batch: int
           ) -> torch.Tensor:
    height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    param = next(model.parameters())
    return torch.randn(batch, in_chans, height, width, device=param.device, dtype=param.dtype)


def count_macs(model: nn.Module, img_size: int | Sequence[int], in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass on one image (see the module docstring)."""
    was_training = model.training
    model.eval()  # BatchNorm running stats stay untouched
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
            model(_input(model, img_size, in_chans, 1))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def make_train_step(model: nn.Module, img_size: int | Sequence[int], batch_size: int,
                    *, optimizer: torch.optim.Optimizer | None = None, in_chans: int = 3,
                    num_classes: int | None = None) -> Callable[[], None]:
    """A closure running one training step on a fixed random batch (forward, backward, and the
    optimizer's step when one is given)."""
    model.train()
    images = _input(model, img_size, in_chans, batch_size)
    classes = num_classes or getattr(model, "num_classes", None) or 1000
    labels = torch.randint(0, classes, (batch_size,), device=images.device)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        loss = loss_fn(model(images), labels)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)

    return step


def measure_images_per_s(model: nn.Module, img_size: int | Sequence[int], *,
                         batch_size: int = 16, steps: int = 5, warmup: int = 2,
                         in_chans: int = 3) -> float:
    """Forward + backward images/s from the median of `steps` timed steps."""
    step = make_train_step(model, img_size, batch_size, in_chans=in_chans)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def _overrides(items: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """--set locality.KNOB=V / locality=null / arch.KEY=V -> (locality argument, arch dict)."""
    from .config import ConfigError, parse_set_args

    locality: Any = "default"
    knobs: dict[str, Any] = {}
    arch: dict[str, Any] = {}
    for key, value in parse_set_args(items).items():
        path = key.split(".")
        if path[0] == "model":
            path = path[1:]
        if path == ["locality"]:
            if value is not None and value != "default":
                raise ConfigError(f"--set {key}: use null or 'default', or set locality.KNOB=V")
            locality = value
        elif len(path) == 2 and path[0] == "locality":
            knobs[path[1]] = value
        elif len(path) == 2 and path[0] == "arch":
            arch[path[1]] = value
        else:
            raise ConfigError(
                f"--set {key}: expected locality.KNOB=V (act, expansion, reduction, layers, "
                "dw_conv), locality=null or arch.KEY=V"
            )
    if knobs:
        locality = knobs
    return locality, arch


def _profile_one(name: str, locality: Any, arch: dict[str, Any], img_size: int | None,
                 speed: bool, batch: int, steps: int) -> dict[str, Any]:
    from . import registry

    size = img_size or registry.default_img_size(name)
    model = registry.create_model(name, locality=locality, img_size=size, **arch)
    spec = registry.resolve_locality(name, locality)
    row = registry.get_variant(name)
    out: dict[str, Any] = {
        "model": name,
        "img_size": size,
        "locality": (None if spec is None
                     else {**dataclasses.asdict(spec), "layers": str(spec.layers)}),
        "arch": arch,
        "params": count_params(model),
        "trainable_params": count_trainable_params(model),
        "macs": count_macs(model, size),
        # The paper's figures describe the default variant at 224 px only.
        "paper": (dataclasses.asdict(row.paper)
                  if row.paper is not None and size == 224 and not arch and locality == "default"
                  else None),
        "macs_counted": MACS_COUNTED,
    }
    if speed:
        out["images_per_s"] = measure_images_per_s(model, size, batch_size=batch, steps=steps)
        out["batch_size"] = batch
        out["threads"] = torch.get_num_threads()
    return out


def _format(rec: dict[str, Any]) -> str:
    paper = rec["paper"] or {}
    p_params = f"{paper['params_m']:.1f} M" if paper.get("params_m") else "-"
    p_macs = f"{paper['macs_g']:.1f} G" if paper.get("macs_g") else "-"
    speed = f"{rec['images_per_s']:8.1f}" if "images_per_s" in rec else "       -"
    return (f"{rec['model']:<22} {rec['img_size']:>4} {rec['params']:>12,} "
            f"{rec['trainable_params']:>12,} {p_params:>8} "
            f"{rec['macs'] / 1e9:9.3f} G {p_macs:>7} {speed}")


def main(argv: Sequence[str] | None = None) -> int:
    from .config import ConfigError

    parser = argparse.ArgumentParser(prog="python -m trainers.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="locality.KNOB=V, locality=null, arch.KEY=V")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="one JSON object per model")
    parser.add_argument("--no-speed", action="store_true", help="skip the images/s measurement")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        locality, arch = _overrides(args.overrides)
        if not args.json:
            print(f"{'model':<22} {'px':>4} {'params':>12} {'trainable':>12} {'paper':>8} "
                  f"{'MACs':>11} "
                  f"{'paper':>7} {'img/s':>8}")
        for name in args.models:
            rec = _profile_one(name, locality, arch, args.img_size, not args.no_speed,
                               args.batch_size, args.steps)
            print(json.dumps(rec) if args.json else _format(rec), flush=True)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.json:
        print(f"\n{MACS_COUNTED}.\nimg/s: forward+backward, batch {args.batch_size}, "
              f"{torch.get_num_threads()} threads; paper = LocalViT table 5 (224 px), whose params "
              "are the trainable ones (T2T's frozen projections and position table excluded).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
