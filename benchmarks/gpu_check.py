"""GPU check: LocalViT-T against DeiT-T with AMP, and a micro sweep end to end on fractional GPUs.

On a machine with a CUDA GPU, in a few minutes:

1. Train-step time of `localvit_tiny` and `deit_tiny` (the registered models) at batch 128,
   224 px, with mixed precision, through the trainer's own step (trainers/_engine.py:
   `train_one_epoch` with float16 autocast, a gradient scaler and AdamW; loss.item() each step,
   as in training). Each setting (eager; `channels_last`; `torch.compile`; both) builds the two
   models and alternates their steps A-B, B-A, ... so that anything else on the card slows both
   alike; warm-up steps (compilation included) are not timed, and torch.cuda.synchronize() is
   called before and after each timed step. It reports each side's minimum and median step time,
   images/s, the ratio of the minima and the median of the per-round ratios. The goal is the
   paper's "negligible increase": LocalViT-T / DeiT-T at most 1.05, compared best setting
   against best setting (and per setting).
2. The quick start as a micro sweep, `python -m orchestrator.sweep search_spaces/quickstart.yaml
   --set ...` with `run.resources_per_trial: {cpu: 2, gpu: 0.25}` (four trials share the card),
   `device: cuda`, `train.amp: true`; then a check that every planned trial is in trials.parquet
   and in the MLflow store, and that every epoch of every trial trained on CUDA with AMP (the
   trainer's `train/cuda` and `train/amp`, in epochs.parquet and in each run's history).

    python benchmarks/gpu_check.py                       # both, results block on stdout
    python benchmarks/gpu_check.py --json gpu_check.json --storage /tmp/gpu_check
    python benchmarks/gpu_check.py --settings eager,channels_last --no-sweep

Exit codes: 0 everything ran and the sweep's records check out (the speed ratio is reported,
met or not; a failed `compile` setting is reported too); 1 the sweep failed or its records do
not check out, or the eager timing (or every setting) failed; 2 no CUDA GPU is visible (one line
on stderr, before any work) or bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu_sweep import (
    ROOT,
    SWEEP_NAME,
    planned_trials,
    run_sweep_cli,
    sweep_sets,
    verify_sweep,
)

if str(ROOT) not in sys.path:
    # The check measures this checkout, as its sweep does (run_sweep_cli's PYTHONPATH).
    sys.path.insert(1, str(ROOT))

PAIR = ("deit_tiny", "localvit_tiny")
SETTINGS = ("eager", "channels_last", "compile", "channels_last+compile")
DEFAULT_SETTINGS = "eager,channels_last,compile"
TARGET = 1.05


def no_gpu_message() -> str | None:
    """Why this machine cannot run the check (one line), or None when a CUDA GPU is visible."""
    if torch.cuda.is_available():
        return None
    build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = "unset" if visible is None else repr(visible)
    return (f"gpu_check: no CUDA GPU is visible (torch {torch.__version__}, {build}, "
            f"CUDA_VISIBLE_DEVICES {shown}); it needs an NVIDIA GPU with its driver and a CUDA "
            f"build of torch. Nothing was run.")


# --------------------------------------------------------------------------------------- timing

def timed(step: Callable[[], None], synchronize: Callable[[], None] | None) -> float:
    """Seconds of one step; with `synchronize`, the queued device work before it is waited for
    first and the step's own work is waited for before the clock stops."""
    if synchronize is not None:
        synchronize()
    start = time.perf_counter()
    step()
    if synchronize is not None:
        synchronize()
    return time.perf_counter() - start


def interleave(a: tuple[str, Callable[[], None]], b: tuple[str, Callable[[], None]], *,
               rounds: int, warmup: int, batch: int,
               synchronize: Callable[[], None] | None = None) -> dict[str, Any]:
    """Alternate the two steps (A-B, B-A, ...) after `warmup` untimed steps of each, and
    summarise: each side's min / median seconds and images/s, the ratio of the minima (B / A)
    and the median of the per-round ratios."""
    (name_a, step_a), (name_b, step_b) = a, b
    for _ in range(warmup):
        step_a()
        step_b()
    times: dict[str, list[float]] = {"a": [], "b": []}
    for r in range(rounds):
        order = (("a", step_a), ("b", step_b)) if r % 2 == 0 else (("b", step_b), ("a", step_a))
        for key, step in order:
            times[key].append(timed(step, synchronize))
    ratios = [tb / ta for ta, tb in zip(times["a"], times["b"], strict=True)]
    out: dict[str, Any] = {"a": name_a, "b": name_b, "rounds": rounds, "warmup": warmup,
                           "batch": batch, "a_times_s": times["a"], "b_times_s": times["b"]}
    for key in ("a", "b"):
        lo, mid = min(times[key]), statistics.median(times[key])
        out.update({f"{key}_min_s": lo, f"{key}_median_s": mid,
                    f"{key}_images_per_s": batch / lo, f"{key}_images_per_s_median": batch / mid})
    out["ratio_min"] = out["b_min_s"] / out["a_min_s"]
    out["ratio_median"] = statistics.median(ratios)
    return out


def prepare_model(name: str, setting: str, *, img_size: int, device: torch.device
                  ) -> torch.nn.Module:
    """The registered model on `device`, its weights in channels_last memory format and/or
    wrapped by torch.compile as `setting` says (compilation happens at its first step)."""
    from trainers import registry

    parts = set(setting.split("+"))
    if not parts <= {"eager", "channels_last", "compile"}:
        raise ValueError(f"unknown setting {setting!r}; use one of {', '.join(SETTINGS)}")
    torch.manual_seed(0)
    model = registry.create_model(name, img_size=img_size).to(device)
    if "channels_last" in parts:
        model = model.to(memory_format=torch.channels_last)
    if "compile" in parts:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


def trainer_step(model: torch.nn.Module, *, batch: int, img_size: int, device: torch.device,
                 amp: bool, channels_last: bool = False, num_classes: int = 1000
                 ) -> Callable[[], None]:
    """One optimizer step of the trainer's loop on a fixed random batch: `train_one_epoch` with
    the DeiT recipe's AdamW (lr 5e-4 x batch / 512, weight decay 0.05) and label-smoothed loss,
    float16 autocast and a gradient scaler when `amp` (CUDA only, as in the trainer)."""
    from timm.optim import create_optimizer_v2

    from trainers._engine import StepContext, train_one_epoch

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, img_size, img_size, generator=gen).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    amp = amp and device.type == "cuda"
    ctx = StepContext(
        optimizer=create_optimizer_v2(model, opt="adamw", lr=5e-4 * batch / 512,
                                      weight_decay=0.05),
        scheduler=None, criterion=torch.nn.CrossEntropyLoss(label_smoothing=0.1), device=device,
        scaler=torch.amp.GradScaler("cuda") if amp else None, amp=amp)
    batches = [(images, labels)]

    def step() -> None:
        train_one_epoch(model, batches, ctx, max_steps=1, global_step=0, epoch=1)

    return step


def compare(setting: str, *, batch: int, img_size: int, rounds: int, warmup: int,
            device: torch.device, amp: bool = True, pair: Sequence[str] = PAIR
            ) -> dict[str, Any]:
    """DeiT-T (A) against LocalViT-T (B) under one setting, interleaved."""
    channels_last = "channels_last" in setting.split("+")
    steps = []
    for name in pair:
        model = prepare_model(name, setting, img_size=img_size, device=device)
        steps.append((name, trainer_step(model, batch=batch, img_size=img_size, device=device,
                                         amp=amp, channels_last=channels_last)))
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    start = time.perf_counter()
    result = interleave(steps[0], steps[1], rounds=rounds, warmup=warmup, batch=batch,
                        synchronize=sync)
    # AMP as the trainer applies it: on CUDA only.
    result.update(setting=setting, img_size=img_size, amp=amp and device.type == "cuda",
                  device=str(device),
                  wall_s=time.perf_counter() - start)
    return result


def best_of(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Each model's fastest setting (by its minimum) and LocalViT-T / DeiT-T between the two."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return None
    a, b = min(ok, key=lambda r: r["a_min_s"]), min(ok, key=lambda r: r["b_min_s"])
    ratio_min = b["b_min_s"] / a["a_min_s"]
    ratio_median = b["b_median_s"] / a["a_median_s"]
    return {"a": a["a"], "a_setting": a["setting"], "a_min_s": a["a_min_s"],
            "b": b["b"], "b_setting": b["setting"], "b_min_s": b["b_min_s"],
            "ratio_min": ratio_min, "ratio_median": ratio_median,
            "met": max(ratio_min, ratio_median) <= TARGET}


def measure_speed(settings: Sequence[str], **kwargs: Any) -> list[dict[str, Any]]:
    """`compare` for each setting; a setting that fails (torch.compile without a working
    compiler, out of memory) is recorded with its error and the others still run."""
    results = []
    for setting in settings:
        try:
            results.append(compare(setting, **kwargs))
        except Exception as exc:  # noqa: BLE001 - one setting's failure is a result to report
            results.append({"setting": setting, "error": f"{type(exc).__name__}: {exc}"[:500]})
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        r = results[-1]
        print(f"  {setting:<22} " + (f"{r['a']} {r['a_min_s'] * 1e3:.1f} ms, {r['b']} "
                                     f"{r['b_min_s'] * 1e3:.1f} ms, ratio {r['ratio_min']:.3f}"
                                     if "error" not in r else f"failed: {r['error']}"),
              file=sys.stderr, flush=True)
    return results


# -------------------------------------------------------------------------------------- results

def environment() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpus_visible": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
    }


def results_block(report: dict[str, Any]) -> str:
    """The short text summary printed at the end (the JSON file holds every figure)."""
    env = report["environment"]
    lines = [f"GPU check, {env['date']}: {env['device']} ({env['gpus_visible']} visible), torch "
             f"{env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}"]
    speed = report.get("speed")
    if speed:
        first = next((r for r in speed if "error" not in r), None)
        if first is not None:
            lines.append(f"train step on {first['device']} "
                         f"{'with' if first['amp'] else 'WITHOUT'} AMP, batch {first['batch']}, "
                         f"{first['img_size']} px; min / median ms over {first['rounds']} "
                         f"interleaved rounds (the first {first['warmup']} steps of each not "
                         f"timed):")
        for r in speed:
            if "error" in r:
                lines.append(f"  {r['setting']:<22} failed: {r['error']}")
                continue
            lines.append(
                f"  {r['setting']:<22} {r['a']} {r['a_min_s'] * 1e3:.1f} / "
                f"{r['a_median_s'] * 1e3:.1f} ({r['a_images_per_s']:.0f} img/s)  {r['b']} "
                f"{r['b_min_s'] * 1e3:.1f} / {r['b_median_s'] * 1e3:.1f} "
                f"({r['b_images_per_s']:.0f} img/s)  ratio {r['ratio_min']:.3f} / "
                f"{r['ratio_median']:.3f}")
        best = report.get("speed_best")
        if best:
            lines.append(
                f"  best against best: {best['b']} ({best['b_setting']}) / {best['a']} "
                f"({best['a_setting']}) = {best['ratio_min']:.3f} (minima), "
                f"{best['ratio_median']:.3f} (medians); target <= {TARGET}: "
                f"{'met' if best['met'] else 'NOT met'}")
    sweep = report.get("sweep")
    if sweep:
        v = sweep["verification"]
        lines.append(f"micro sweep ({sweep['planned']} trials, {sweep['resources']}): exit "
                     f"{sweep['exit_code']} in {sweep['seconds']:.0f} s; "
                     f"{v['trials']}/{sweep['planned']} trials in Parquet, "
                     f"{v['mlflow_runs']}/{sweep['planned']} in MLflow, {v['epochs']} epochs, "
                     f"statuses {v['statuses']}")
        lines.append("  every epoch on CUDA with AMP, every trial in Parquet and MLflow: "
                     + ("yes" if sweep["ok"] else "NO"))
        lines += [f"  problem: {p}" for p in v["problems"][:20]]
        if not sweep["ok"]:
            lines.append(f"  sweep log: {sweep['log']}")
    lines.append(f"total {report['seconds']:.0f} s")
    return "\n".join(lines)


def run_micro_sweep(storage: Path, *, gpu: float, cpus: int, timeout_s: float) -> dict[str, Any]:
    sets = sweep_sets(storage, gpu=gpu, cpus=cpus)
    planned = planned_trials(sets)
    print(f"micro sweep: {len(planned)} trials into {storage} (log {storage / 'sweep.log'})",
          file=sys.stderr, flush=True)
    run = run_sweep_cli(sets, storage / "sweep.log", timeout_s=timeout_s)
    check = verify_sweep(storage / SWEEP_NAME, planned, cuda=True, amp=True)
    if run.exit_code != 0:
        check.problems.insert(0, f"the sweep exited {run.exit_code}")
    return {"planned": len(planned), "resources": f"cpu {cpus}, gpu {gpu:g} per trial",
            "sets": sets, "exit_code": run.exit_code, "seconds": run.seconds,
            "log": str(run.log), "storage": str(storage), "ok": run.exit_code == 0 and check.ok,
            "verification": {"trials": check.trials, "mlflow_runs": check.mlflow_runs,
                             "epochs": check.epochs, "statuses": check.statuses,
                             "problems": check.problems}}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help=f"comma-separated, of {', '.join(SETTINGS)} (default {DEFAULT_SETTINGS})")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--gpu-per-trial", type=float, default=0.25)
    p.add_argument("--cpus-per-trial", type=int, default=2)
    p.add_argument("--sweep-timeout", type=float, default=240.0, help="seconds (default 240)")
    p.add_argument("--storage", type=Path, default=None,
                   help="the micro sweep's run.storage, without a gpu_check sweep in it yet "
                        "(default: a new temporary folder, kept)")
    p.add_argument("--no-speed", action="store_true", help="skip the train-step timing")
    p.add_argument("--no-sweep", action="store_true", help="skip the micro sweep")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write every figure as JSON")
    args = p.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        p.error(f"--settings: unknown {', '.join(bad)}; use {', '.join(SETTINGS)}")
    if args.storage is not None and (args.storage / SWEEP_NAME).exists():
        p.error(f"--storage: {args.storage / SWEEP_NAME} exists (an earlier check); give a new "
                f"folder")
    refusal = no_gpu_message()
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return 2

    start = time.perf_counter()
    report: dict[str, Any] = {"environment": environment()}
    if not args.no_speed:
        print(f"train-step timing ({', '.join(settings)}):", file=sys.stderr, flush=True)
        speed = measure_speed(settings, batch=args.batch_size, img_size=args.img_size,
                              rounds=args.rounds, warmup=args.warmup,
                              device=torch.device("cuda"))
        report["speed"] = speed
        report["speed_best"] = best_of(speed)
    if not args.no_sweep:
        storage = args.storage or Path(tempfile.mkdtemp(prefix="gpu_check-"))
        report["sweep"] = run_micro_sweep(storage.resolve(), gpu=args.gpu_per_trial,
                                          cpus=args.cpus_per_trial,
                                          timeout_s=args.sweep_timeout)
    report["seconds"] = time.perf_counter() - start
    print(results_block(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"JSON: {args.json}")
    speed_ok = "speed" not in report or (
        report["speed_best"] is not None
        and not any("error" in r and r["setting"] == "eager" for r in report["speed"]))
    return 0 if speed_ok and report.get("sweep", {"ok": True})["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
