"""Parameters, MACs and training throughput of registry models; `python -m trainers.profile`.

What is counted:
- params: every tensor of `model.parameters()` and the fixed tensors the authors count with them
  (T2T's random features and sinusoid table, buffers here); BatchNorm statistics excluded.
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

__all__ = ["MACS_COUNTED", "MacCounter", "count_macs", "count_params", "count_trainable_params",
           "main", "make_train_step", "measure_images_per_s"]

MACS_COUNTED = ("MACs = FLOPs/2 of every linear, conv (depth-wise included) and matmul "
                "(attention included), one image, eval mode; norms, activations, softmax not "
                "counted")


def count_params(model: nn.Module) -> int:
    """What the authors count: `model.parameters()` and the buffers listed in a module's
    `fixed_tensors` (T2T's tables, parameters without gradients in the authors' code)."""
    fixed = [getattr(m, name) for m in model.modules() for name in getattr(m, "fixed_tensors", ())]
    return sum(p.numel() for p in model.parameters()) + sum(t.numel() for t in fixed)


def count_trainable_params(model: nn.Module) -> int:
    """Parameters with requires_grad: what the authors' training script prints and the paper's
    table reports (it differs from count_params only by T2T's fixed tensors)."""
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
    return _count_flops(model, lambda: (_input(model, img_size, in_chans, 1),))[0] // 2


def _count_flops(module: nn.Module, inputs: Callable[[], tuple], *,
                 watch: type[nn.Module] | None = None) -> tuple[int, list[_Call]]:
    """FLOPs of `module(*inputs())` in eval mode, and every call of a `watch` submodule in it
    (its arguments and the FLOPs counted inside it)."""
    calls: list[_Call] = []
    handles = []
    was_training = module.training
    module.eval()  # BatchNorm running stats stay untouched
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
            if watch is not None:
                for sub in module.modules():
                    if isinstance(sub, watch):
                        handles += _watch(sub, counter, calls)
            module(*inputs())
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    return counter.get_total_flops(), calls


@dataclasses.dataclass
class _Call:
    module: nn.Module
    args: tuple
    kwargs: dict
    flops: int = -1     # -1 until the call returned


def _watch(module: nn.Module, counter: FlopCounterMode, calls: list[_Call]) -> list:
    started: list[tuple[_Call, int]] = []

    def before(mod, args, kwargs):
        call = _Call(mod, args, kwargs)
        calls.append(call)
        started.append((call, counter.get_total_flops()))

    def after(mod, args, kwargs, out):
        call, flops_before = started.pop()
        call.flops = counter.get_total_flops() - flops_before

    return [module.register_forward_pre_hook(before, with_kwargs=True),
            module.register_forward_hook(after, with_kwargs=True)]


class MacCounter:
    """`count_macs` of registry models from their configs, fast for many models that differ only
    in the locality knobs; the number is exactly count_macs(build_from_config(cfg), img_size).

    A model's count is a sum over the operations of its forward pass, and the knobs act, expansion,
    reduction and dw_conv change nothing but the insides of its `LocalityFeedForward` blocks (the
    `layers` knob says which blocks have one). So a model is traced once per architecture with the
    FFNs left in place (the backbone, arch, drop_path, image size and which blocks get the FFN):
    that gives the count of everything outside the FFNs, and each FFN's place (width, MLP ratio,
    input shape, token grid). Every other set of knobs then costs the count of those FFNs alone,
    each traced on its own once per (place, knobs). The split is checked before it is used: each
    FFN traced on its own must count what it counted inside the model, and every FFN must have the
    model's knobs (T2T's token layers do not); where that fails the architecture is traced whole
    for each model, as count_macs would. Models are built on the meta device (no memory, no
    arithmetic) unless they cannot be built there.
    """

    def __init__(self, num_classes: int = 10) -> None:
        self.num_classes = num_classes
        self.traced_models = 0      # whole-model traces, for the curious and the tests
        self.traced_ffns = 0
        self._models: dict[str, int] = {}
        self._archs: dict[str, _Arch | None] = {}
        self._ffns: dict[tuple, int] = {}

    def macs(self, cfg: Any, img_size: int | Sequence[int]) -> int:
        """MACs of one forward pass on one image of the model of `cfg` (a ModelConfig)."""
        from . import registry
        from .locality import resolve_layers

        size = img_size if isinstance(img_size, int) else tuple(img_size)
        ident = json.dumps([cfg.model_dump(mode="json"), size], sort_keys=True)
        if ident in self._models:
            return self._models[ident]
        spec = registry.resolve_locality(cfg.backbone, cfg.locality)
        layers = (None if spec is None else
                  sorted(resolve_layers(spec.layers, registry.depth(cfg.backbone, **cfg.arch))))
        arch_key = json.dumps([cfg.backbone, cfg.arch, cfg.drop_path, size, layers],
                              sort_keys=True)
        if arch_key not in self._archs:
            flops, self._archs[arch_key] = self._trace(cfg, size, spec)
        elif (arch := self._split(arch_key)) is None:
            model = self._build(cfg, size)
            self.traced_models += 1
            flops = _count_flops(model, lambda: (_input(model, size, 3, 1),))[0]
        else:
            flops = arch.rest + sum(self._ffn_flops(place, spec) for place in arch.ffns)
        self._models[ident] = flops // 2
        return flops // 2

    def _build(self, cfg: Any, size: Any) -> nn.Module:
        from . import registry

        try:
            with torch.device("meta"):
                return registry.build_from_config(cfg, num_classes=self.num_classes,
                                                  img_size=size)
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            return registry.build_from_config(cfg, num_classes=self.num_classes, img_size=size)

    def _trace(self, cfg: Any, size: Any, spec: Any) -> tuple[int, _Arch | None]:
        """Trace the whole model; its FFNs' places and counts, or None if it has no such split."""
        from .locality import LocalityFeedForward

        model = self._build(cfg, size)
        self.traced_models += 1
        total, calls = _count_flops(model, lambda: (_input(model, size, 3, 1),),
                                    watch=LocalityFeedForward)
        ffns = [m for m in model.modules() if isinstance(m, LocalityFeedForward)]
        if len(calls) != len(ffns) or {id(c.module) for c in calls} != {id(m) for m in ffns}:
            return total, None      # an FFN ran twice or never
        found = [_ffn_place(call) for call in calls]
        places = tuple(p for p in found if p is not None)
        if len(places) != len(found) or any(call.module.spec != spec for call in calls):
            return total, None      # an FFN with knobs of its own (T2T's token layers)
        return total, _Arch(rest=total - sum(c.flops for c in calls), ffns=places, spec=spec,
                            ffn_flops=tuple(c.flops for c in calls))

    def _split(self, arch_key: str) -> _Arch | None:
        """The architecture's split, checked the first time it is used for other knobs: each FFN
        traced on its own counts what it counted inside the model."""
        arch = self._archs[arch_key]
        if arch is not None and not arch.checked:
            try:
                arch.checked = all(self._ffn_flops(place, arch.spec) == flops
                                   for place, flops in zip(arch.ffns, arch.ffn_flops, strict=True))
            except Exception:  # noqa: BLE001 - an FFN that cannot run alone: no split
                arch.checked = False
            if not arch.checked:
                arch = self._archs[arch_key] = None
        return arch

    def _ffn_flops(self, place: tuple, spec: Any) -> int:
        key = (place, dataclasses.replace(spec, layers="all"))
        if key not in self._ffns:
            from .locality import LocalityFeedForward

            dim, mlp_ratio, shape, grid, prefix, device = place
            with torch.device(device):
                ffn = LocalityFeedForward(dim, spec, mlp_ratio=mlp_ratio)
            x = torch.empty(shape, device=device)
            self._ffns[key] = _count_flops(ffn, lambda: (x, grid, prefix))[0]
            self.traced_ffns += 1
        return self._ffns[key]


@dataclasses.dataclass
class _Arch:
    rest: int                   # FLOPs outside the locality FFNs
    ffns: tuple[tuple, ...]     # each FFN's place (see _ffn_place)
    spec: Any                   # the knobs it was traced with
    ffn_flops: tuple[int, ...]  # each FFN's FLOPs inside the model
    checked: bool = False


def _ffn_place(call: _Call) -> tuple | None:
    """(dim, mlp_ratio, input shape, grid, prefix tokens, device) of a LocalityFeedForward call,
    or None if it was not called as forward(x, grid, num_prefix_tokens)."""
    names = ("x", "grid", "num_prefix_tokens")
    # Fewer positional arguments than names: the rest came by keyword (or not at all).
    bound = {**dict(zip(names, call.args, strict=False)), **call.kwargs}
    if set(bound) - set(names) or "x" not in bound or "grid" not in bound:
        return None
    from .locality import LocalityFeedForward

    x = bound["x"]
    module = call.module
    assert isinstance(module, LocalityFeedForward), type(module)
    conv = module.conv[0]
    assert isinstance(conv, torch.nn.Conv2d), type(conv)
    return (conv.in_channels, module.mlp_ratio, tuple(x.shape),
            tuple(int(g) for g in bound["grid"]), int(bound.get("num_prefix_tokens", 0)),
            str(x.device))


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
