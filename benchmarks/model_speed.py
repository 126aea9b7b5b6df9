"""Train-step speed of LocalViT against its baseline and against a straightforward implementation.

The paper's locality FFN adds about 1% MACs to DeiT-T and swaps GELU for the cheaper h-swish, so a
plain implementation trains LocalViT-T about as fast as DeiT-T. This benchmark checks ours on this
CPU. Each comparison builds its two sides (A, B) and alternates their training steps (forward,
backward, AdamW step on a fixed random batch) A-B, B-A, ... so a shared machine slows both alike;
it reports each side's minimum and median step time, the ratio of the minima (B / A: the least
disturbed steps) and the median of the per-round ratios, and the 1-minute load average before and
after. The comparisons:

- each (baseline, LocalViT) model pair, DeiT-T vs LocalViT-T at 224 px first;
- LocalViT-T as built here vs a straightforward LocalViT-T written in this file from docs/paper.md
  (timm's ViT with plain blocks: attention, then the FFN as an nn.Sequential on the token grid);
- the locality FFN alone (dim 192, gamma 4, h-swish + SE, 16 x 197 tokens) vs the same
  straightforward FFN, and vs the LayerNorm + GELU MLP it replaces in a DeiT-T block.

    python benchmarks/model_speed.py                 # every comparison, print only
    python benchmarks/model_speed.py --record        # also rewrite the models section of RESULTS.md

Target: on an idle 2-core machine, LocalViT-T / DeiT-T <= 1.05 at 224 px, batch 16,
2 threads, and LocalViT-T no slower than the straightforward implementation. A machine is taken
as idle when its 1-minute load average is below 1.0 before the run; a run under more load is
recorded with its load stated, never as the idle figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from timm.layers import Attention, Mlp
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from trainers import registry
from trainers.locality import LocalityFeedForward, LocalitySpec
from trainers.profile import count_macs, count_params, make_train_step

RESULTS = Path(__file__).with_name("RESULTS.md")
BEGIN, END = "<!-- models:begin -->", "<!-- models:end -->"
DEFAULT_PAIRS = ("deit_tiny:localvit_tiny", "vit_micro:localvit_micro",
                 "swin_micro:localvit_swin_micro", "tnt_micro:localvit_tnt_micro",
                 "pvt_micro:localvit_pvt_micro", "t2t_vit_micro:localvit_t2t_micro")
IDLE_LOAD = 1.0
# An independent interleaved check, not this script: idle 2-core machine, 224 px,
# batch 16, 2 threads, min of 7 rounds.
INDEPENDENT = ("an independent interleaved check on an idle 2-core machine (224 px, batch 16, "
               "2 threads, min of 7 rounds) measured LocalViT-T / DeiT-T 0.94 and LocalViT-T / "
               "a straightforward implementation 1.02")


# ------------------------------------------------------------- the straightforward implementation

class StraightSE(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels), nn.Hardsigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class StraightFFN(nn.Module):
    """docs/paper.md section 2 written the plainest way: class token split off, tokens to a square
    grid, 1x1 conv-BN-hs, 3x3 dw conv-BN-hs, SE, 1x1 conv-BN, residual, back to tokens."""

    def __init__(self, dim: int, gamma: int = 4, se_hidden: int = 4) -> None:
        super().__init__()
        hidden = gamma * dim
        self.conv = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.Hardswish(), StraightSE(hidden, se_hidden),
            nn.Conv2d(hidden, dim, 1, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, dim = x.shape
        side = int(math.sqrt(n - 1))
        cls, tokens = x[:, :1], x[:, 1:]
        img = tokens.transpose(1, 2).reshape(batch, dim, side, side)
        img = img + self.conv(img)
        return torch.cat([cls, img.flatten(2).transpose(1, 2)], dim=1)


class StraightBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias=True)
        self.ffn = StraightFFN(dim, se_hidden=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(x + self.attn(self.norm1(x)))


def straight_localvit_tiny(img_size: int) -> nn.Module:
    """LocalViT-T (dim 192, 12 blocks, 4 heads, gamma 4, hs+se, SE hidden 4) on timm's ViT."""
    model = VisionTransformer(img_size=img_size, patch_size=16, embed_dim=192, depth=12,
                              num_heads=4, num_classes=1000)
    model.blocks = nn.Sequential(*[StraightBlock(192, 4) for _ in range(12)])
    return model


# --------------------------------------------------------------------------------------- timing

def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        match = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        if match:
            return match.group(1).strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def _timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _model_step(model: nn.Module, size: int, batch: int) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return make_train_step(model, size, batch, optimizer=opt)


def _ffn_step(module: nn.Module, batch: int) -> Callable[[], None]:
    """One train step of an FFN on (batch, 1 + 14 * 14, 192) tokens (DeiT-T's grid at 224 px),
    with the gradient to its input as inside a model."""
    module.train()
    x = torch.randn(batch, 1 + 14 * 14, 192, requires_grad=True)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def step() -> None:
        module(x).square().mean().backward()
        opt.step()
        module.zero_grad(set_to_none=True)
        x.grad = None

    return step


def interleave(name: str, a: tuple[str, Callable[[], None]], b: tuple[str, Callable[[], None]],
               *, rounds: int, warmup: int, **facts) -> dict:
    """Alternate the two steps (A-B, B-A, ...) and summarise the step times."""
    (name_a, step_a), (name_b, step_b) = a, b
    load_before = os.getloadavg()[0]
    for _ in range(warmup):
        step_a(), step_b()
    times: dict[str, list[float]] = {"a": [], "b": []}
    ratios = []
    for r in range(rounds):
        order = (("a", step_a), ("b", step_b)) if r % 2 == 0 else (("b", step_b), ("a", step_a))
        got = {key: _timed(step) for key, step in order}
        times["a"].append(got["a"])
        times["b"].append(got["b"])
        ratios.append(got["b"] / got["a"])
    return {
        "name": name, "a": name_a, "b": name_b, "rounds": rounds,
        "a_min": min(times["a"]), "a_median": statistics.median(times["a"]),
        "b_min": min(times["b"]), "b_median": statistics.median(times["b"]),
        "ratio_min": min(times["b"]) / min(times["a"]), "ratio_median": statistics.median(ratios),
        "load": (load_before, os.getloadavg()[0]), **facts,
    }


def compare_models(base: str, local: str, *, batch: int, rounds: int, warmup: int,
                   img_size: int | None) -> dict:
    size = img_size or registry.default_img_size(base)
    steps, macs = {}, {}
    for name in (base, local):
        torch.manual_seed(0)
        model = registry.create_model(name, img_size=size)
        macs[name] = count_macs(model, size)
        steps[name] = _model_step(model, size, batch)
    return interleave(f"{local} / {base}", (base, steps[base]), (local, steps[local]),
                      rounds=rounds, warmup=warmup, img_size=size, batch=batch,
                      macs_ratio=macs[local] / macs[base])


def compare_straightforward(*, batch: int, rounds: int, warmup: int, img_size: int) -> dict:
    torch.manual_seed(0)
    straight = straight_localvit_tiny(img_size)
    ours = registry.create_model("localvit_tiny", img_size=img_size, drop_path_rate=0.0)
    assert count_params(straight) == count_params(ours), "not the same model"
    return interleave("localvit_tiny / straightforward", ("straightforward",
                      _model_step(straight, img_size, batch)),
                      ("localvit_tiny", _model_step(ours, img_size, batch)),
                      rounds=rounds, warmup=warmup, img_size=img_size, batch=batch,
                      macs_ratio=count_macs(ours, img_size) / count_macs(straight, img_size))


class _Tokens(nn.Module):
    """Our FFN on DeiT-T's 14 x 14 grid with its class token (it takes the grid explicitly)."""

    def __init__(self) -> None:
        super().__init__()
        self.ffn = LocalityFeedForward(192, LocalitySpec(act="hs+se", expansion=4, reduction=192))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(x, (14, 14), 1)


class _NormMlp(nn.Module):
    """What the locality FFN replaces in a DeiT-T block: x + MLP(LayerNorm(x)), GELU, ratio 4."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.mlp = nn.LayerNorm(192, eps=1e-6), Mlp(192, 768)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


def _token_macs(module: nn.Module) -> int:
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.randn(1, 1 + 14 * 14, 192))
    return counter.get_total_flops() // 2


def compare_ffn(*, batch: int, rounds: int, warmup: int) -> dict:
    torch.manual_seed(0)
    straight, ours = StraightFFN(192, gamma=4, se_hidden=4), _Tokens()
    assert count_params(straight) == count_params(ours), "not the same block"
    return interleave("locality FFN / straightforward", ("straightforward",
                      _ffn_step(straight, batch)), ("LocalityFeedForward",
                      _ffn_step(ours, batch)), rounds=rounds, warmup=warmup,
                      img_size=224, batch=batch,
                      macs_ratio=_token_macs(ours) / _token_macs(straight))


def compare_ffn_to_mlp(*, batch: int, rounds: int, warmup: int) -> dict:
    torch.manual_seed(0)
    mlp, ours = _NormMlp(), _Tokens()
    return interleave("locality FFN / LayerNorm + MLP", ("LayerNorm + MLP",
                      _ffn_step(mlp, batch)), ("LocalityFeedForward", _ffn_step(ours, batch)),
                      rounds=rounds, warmup=warmup, img_size=224, batch=batch,
                      macs_ratio=_token_macs(ours) / _token_macs(mlp))


# -------------------------------------------------------------------------------------- results

def _row(r: dict) -> str:
    ms = 1000.0
    return (f"| {r['name']} | {r['img_size']} | {r['batch']} | {r['rounds']} "
            f"| {r['a_min'] * ms:.1f} / {r['a_median'] * ms:.1f} "
            f"| {r['b_min'] * ms:.1f} / {r['b_median'] * ms:.1f} "
            f"| **{r['ratio_min']:.3f}** | {r['ratio_median']:.3f} | {r['macs_ratio']:.4f} "
            f"| {r['load'][0]:.1f} / {r['load'][1]:.1f} |")


def markdown(results: list[dict], threads: int, load: tuple[float, float]) -> str:
    idle = load[0] < IDLE_LOAD
    by_name = {r["name"]: r for r in results}
    main = by_name.get("localvit_tiny / deit_tiny")
    straight = by_name.get("localvit_tiny / straightforward")
    ffn_mlp = by_name.get("locality FFN / LayerNorm + MLP")
    lines = [
        BEGIN,
        "## Models: train-step speed of LocalViT vs its baseline (CPU)",
        "",
        f"Recorded {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} on {cpu_model()} "
        f"({platform.system()}), torch {torch.__version__}, {threads} threads, {os.cpu_count()} "
        f"cores, 1-minute load average **{load[0]:.1f} before / {load[1]:.1f} after** the run "
        f"({'idle before the run' if idle else 'NOT idle: other work shared the cores'}; the "
        f"figures during and after include this benchmark's own {threads} threads), by "
        "`python benchmarks/model_speed.py --record`. One step = forward + backward + AdamW on a "
        "fixed random batch; the two sides' steps interleaved A-B, B-A, ...; times are the "
        "minimum / median over the rounds; ratio of minima = B min / A min (the least disturbed "
        "steps; lower is faster for B); median ratio = median over rounds of B / A.",
        "",
        "| B / A | px | batch | rounds | A min / median ms | B min / median ms "
        "| ratio of minima | median ratio | MACs ratio | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[_row(r) for r in results],
        "",
    ]
    if main is not None:
        met = max(main["ratio_min"], main["ratio_median"]) <= 1.05
        lines.append(
            f"- LocalViT-T / DeiT-T at {main['img_size']} px, batch {main['batch']}: ratio of "
            f"minima {main['ratio_min']:.3f}, median ratio {main['ratio_median']:.3f}; target "
            f"<= 1.05 on an idle machine **{'met' if met and idle else 'NOT met'}**"
            f"{'' if idle else ' (not an idle machine)'}. The locality FFN adds "
            f"{100 * (main['macs_ratio'] - 1):.2f}% MACs.")
    if straight is not None:
        same = min(straight["ratio_min"], straight["ratio_median"]) <= 1.02
        lines.append(
            f"- LocalViT-T as built here / a straightforward LocalViT-T (this file, same "
            f"parameters): ratio of minima {straight['ratio_min']:.3f}, median ratio "
            f"{straight['ratio_median']:.3f}: "
            f"{'no slower (within 2%)' if same else 'SLOWER'} than the straightforward code.")
    if ffn_mlp is not None:
        lines.append(
            f"- The locality FFN alone takes {ffn_mlp['ratio_min']:.2f}x (ratio of minima) the "
            f"time of the LayerNorm + GELU MLP it replaces, for {ffn_mlp['macs_ratio']:.3f}x its "
            f"MACs: the extra time is in the FFN's own operations (three train-mode BatchNorms, "
            f"the depth-wise conv, h-swish, SE), which a straightforward implementation pays "
            f"alike, not in how it is wired into timm's blocks.")
    if main is not None and main["ratio_min"] > 1.05:
        lines.append(
            f"- For reference, {INDEPENDENT}. This run (load {load[0]:.1f} before) does not "
            f"reproduce that idle figure{'' if idle else ' under load'}.")
    lines.append(END)
    return "\n".join(lines)


def record(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="*", default=list(DEFAULT_PAIRS),
                        metavar="BASE:LOCALVIT")
    parser.add_argument("--no-straightforward", action="store_true",
                        help="skip LocalViT-T and its FFN against the straightforward versions "
                             "and the FFN against the MLP")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=None,
                        help="one size for every pair (default: each variant's own)")
    parser.add_argument("--record", action="store_true", help=f"rewrite the section in {RESULTS}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    print(f"1-minute load average before: {load_before:.2f} on {os.cpu_count()} cores"
          + ("" if load_before < IDLE_LOAD else " (loaded: not an idle-machine measurement)"),
          flush=True)
    timing = dict(batch=args.batch_size, rounds=args.rounds, warmup=args.warmup)
    jobs: list[Callable[[], dict]] = []
    for pair in args.pairs:
        base, _, local = pair.partition(":")
        jobs.append(lambda b=base, loc=local: compare_models(b, loc, img_size=args.img_size,
                                                             **timing))
    if not args.no_straightforward:
        jobs.append(lambda: compare_straightforward(img_size=args.img_size or 224, **timing))
        # A block step is ~1/20 of a model step: more rounds for the same noise.
        block = dict(timing, rounds=4 * args.rounds)
        jobs.append(lambda: compare_ffn(**block))
        jobs.append(lambda: compare_ffn_to_mlp(**block))
    results = []
    for job in jobs:
        r = job()
        print(f"{r['name']:<38} {r['img_size']:>4}px  A {r['a_min'] * 1e3:7.1f}/"
              f"{r['a_median'] * 1e3:7.1f} ms  B {r['b_min'] * 1e3:7.1f}/"
              f"{r['b_median'] * 1e3:7.1f} ms  ratio of minima {r['ratio_min']:.3f}  "
              f"median ratio {r['ratio_median']:.3f}  load {r['load'][0]:.1f}/{r['load'][1]:.1f}",
              flush=True)
        results.append(r)
    load_after = os.getloadavg()[0]
    print(f"1-minute load average after: {load_after:.2f}")
    section = markdown(results, args.threads, (load_before, load_after))
    if args.record:
        record(section)
        print(f"recorded in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
