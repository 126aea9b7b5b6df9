"""Train-step speed of LocalViT against its baseline on this CPU, timed A/B interleaved.

The paper's locality FFN adds under 2% MACs to DeiT-T and swaps GELU for the cheaper h-swish, so a
plain implementation trains LocalViT-T no slower than DeiT-T. This benchmark checks ours: it
builds each (baseline, LocalViT) pair, alternates their training steps (forward, backward, AdamW
step) in A-B-B-A order so a loaded, shared CPU slows both alike, and reports each model's median
images/s and the median of the per-round step-time ratios (LocalViT / baseline).

    python benchmarks/model_speed.py                 # DeiT-T vs LocalViT-T at 224 px + small pairs
    python benchmarks/model_speed.py --record        # also rewrite the models section of RESULTS.md

Target: ratio <= 1.05 for LocalViT-T / DeiT-T at 224 px, batch 16, 2 threads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from trainers import registry
from trainers.profile import count_macs, count_params, make_train_step

RESULTS = Path(__file__).with_name("RESULTS.md")
BEGIN, END = "<!-- models:begin -->", "<!-- models:end -->"
DEFAULT_PAIRS = ("deit_tiny:localvit_tiny", "vit_micro:localvit_micro",
                 "swin_micro:localvit_swin_micro", "tnt_micro:localvit_tnt_micro",
                 "pvt_micro:localvit_pvt_micro", "t2t_vit_micro:localvit_t2t_micro")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        match = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        if match:
            return match.group(1).strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def _timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def compare(base: str, local: str, *, batch: int, rounds: int, warmup: int,
            img_size: int | None) -> dict:
    size = img_size or registry.default_img_size(base)
    steps, info = {}, {}
    for name in (base, local):
        torch.manual_seed(0)
        model = registry.create_model(name, img_size=size)
        info[name] = {"params": count_params(model), "macs": count_macs(model, size)}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        steps[name] = make_train_step(model, size, batch, optimizer=opt)
    for _ in range(warmup):
        steps[base](), steps[local]()
    times = {base: [], local: []}
    ratios = []
    for r in range(rounds):
        order = (base, local) if r % 2 == 0 else (local, base)  # A-B, B-A, ...
        got = {name: _timed(steps[name]) for name in order}
        for name in order:
            times[name].append(got[name])
        ratios.append(got[local] / got[base])
    return {
        "pair": f"{local} / {base}", "img_size": size, "batch": batch, "rounds": rounds,
        "ips_base": batch / statistics.median(times[base]),
        "ips_local": batch / statistics.median(times[local]),
        "ratio": statistics.median(ratios),
        "macs_ratio": info[local]["macs"] / info[base]["macs"],
        "params_base": info[base]["params"], "params_local": info[local]["params"],
    }


def markdown(results: list[dict], threads: int, load: tuple[float, float]) -> str:
    main = next((r for r in results if r["pair"] == "localvit_tiny / deit_tiny"), None)
    verdict = []
    if main is not None:
        met = main["ratio"] <= 1.05
        verdict = [
            "",
            f"LocalViT-T / DeiT-T at {main['img_size']} px, batch {main['batch']}: step-time ratio "
            f"**{main['ratio']:.3f}**, target (<= 1.05) **{'met' if met else 'NOT met'}**; the "
            f"locality FFN adds {100 * (main['macs_ratio'] - 1):.2f}% MACs.",
        ]
        if not met:
            verdict += [
                "",
                "Where the time goes (torch.profiler on one LocalViT-T block, batch 16): the "
                "matrix products cost the same as the MLP's, but each locality FFN runs three "
                "train-mode BatchNorms (two over the 4x hidden width), a depth-wise 3x3 conv and "
                "the SE gate, each a memory-bound pass forward and backward that on this CPU costs "
                "more than the GELU + LayerNorm it replaces; channels-last views (no Seq2Img "
                "copy) and 1x1 convs as token GEMMs measured no faster, torch.compile of the FFN "
                "gave no gain, and folding BatchNorm into the convs at train time is ruled out.",
            ]
    lines = [
        BEGIN,
        "## Models: train-step speed of LocalViT vs its baseline (CPU)",
        "",
        f"Recorded {dt.date.today().isoformat()} on {cpu_model()} ({platform.system()}), "
        f"torch {torch.__version__}, {threads} threads, 1-minute load average {load[0]:.1f} "
        f"before / {load[1]:.1f} after on {os.cpu_count()} cores, by "
        "`python benchmarks/model_speed.py --record`. One step = forward + backward + AdamW on a fixed random batch; A/B steps "
        "interleaved (A-B, B-A, ...) on a CPU shared with other work; step-time ratio = median "
        "over rounds of LocalViT step time / baseline step time (lower is faster).",
        "",
        "| LocalViT / baseline | px | batch | rounds | baseline img/s | LocalViT img/s "
        "| step-time ratio | MACs ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['pair']} | {r['img_size']} | {r['batch']} | {r['rounds']} "
            f"| {r['ips_base']:.1f} | {r['ips_local']:.1f} | {r['ratio']:.3f} "
            f"| {r['macs_ratio']:.4f} |"
        )
    lines += verdict + [END]
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
    parser.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS),
                        metavar="BASE:LOCALVIT")
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
    results = []
    for pair in args.pairs:
        base, _, local = pair.partition(":")
        res = compare(base, local, batch=args.batch_size, rounds=args.rounds,
                      warmup=args.warmup, img_size=args.img_size)
        print(f"{res['pair']:<42} {res['img_size']:>4}px  {res['ips_base']:8.1f} vs "
              f"{res['ips_local']:8.1f} img/s  step-time ratio {res['ratio']:.3f}  "
              f"MACs ratio {res['macs_ratio']:.4f}", flush=True)
        results.append(res)
    section = markdown(results, args.threads, (load_before, os.getloadavg()[0]))
    if args.record:
        record(section)
        print(f"recorded in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
