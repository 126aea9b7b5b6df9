"""trainers.train: determinism, exact resume, metrics files, divergence, bad input, and the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from trainers._checkpoint import load_checkpoint
from trainers.config import ConfigError, apply_overrides, train_config_from_dict
from trainers.train import TrialDiverged, TrialResult, metric_names, train, validate_config

ROOT = Path(__file__).resolve().parents[1]
# Wall-clock metrics differ between any two runs; everything else must match to the bit.
TIMING = {"epoch_time_s", "train/images_per_s"}

# A tiny LocalViT on digits with every stochastic part of the recipe switched on (RandAugment and
# random erasing: Python/torch RNG; Mixup/CutMix: numpy RNG; EMA), capped to a few steps.
TINY = {
    "model": {"backbone": "localvit_micro", "arch": {"depth": 2, "embed_dim": 32}},
    "data": {"name": "digits", "val_fraction": 0.1},
    "train": {"epochs": 3, "batch_size": 16, "lr": 1e-3, "warmup_epochs": 1,
              "steps_per_epoch": 4, "ema": True, "ema_decay": 0.9},
    "aug": {"auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0},
    "seed": 0, "device": "cpu", "threads": 1,
}


def tiny(**overrides):
    return train_config_from_dict(apply_overrides(TINY, overrides))


class Recorder:
    def __init__(self, stop_after: int | None = None):
        self.calls: list[tuple[int, dict, str | None]] = []
        self.stop_after = stop_after

    def report(self, metrics, *, epoch, checkpoint_dir):
        self.calls.append((epoch, metrics, checkpoint_dir))
        if epoch == self.stop_after:
            raise KeyboardInterrupt  # a kill right after the epoch's checkpoint was written


def exact(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[TrialResult, Recorder, Path]:
    out = tmp_path_factory.mktemp("straight")
    rec = Recorder()
    return train(tiny(), rec, out_dir=out), rec, out


def test_reports_every_epoch_with_the_agreed_metrics(straight):
    result, rec, out = straight
    assert [c[0] for c in rec.calls] == [1, 2, 3]
    assert all(c[2] == str(out) for c in rec.calls)
    keys = {"train/loss", "val/loss", "val/top1", "val/top5", "lr", "epoch_time_s",
            "train/images_per_s", "params", "macs", "val_ema/top1"}
    for _, m, _ in rec.calls:
        assert keys <= set(m)
        assert 0.0 <= m["val/top1"] <= m["val/top5"] <= 1.0
        assert all(isinstance(v, float) for v in m.values())
    assert result.epochs_run == 3 and result.final == rec.calls[-1][1]
    assert result.best_top1 == max(m["val/top1"] for _, m, _ in rec.calls)
    from trainers import registry

    model = registry.build_from_config(tiny().model, num_classes=10, img_size=16)
    assert result.params == rec.calls[0][1]["params"] == sum(p.numel() for p in model.parameters())
    assert result.macs == rec.calls[0][1]["macs"] > result.params  # every weight is used >= once
    # metrics.jsonl: one object per epoch, the reported metrics plus "epoch".
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [{k: v for k, v in r.items() if k != "epoch"} for r in rows] == \
        [m for _, m, _ in rec.calls]
    # The checkpoint loads without pickle and holds the whole training state.
    ckpt = load_checkpoint(out)
    assert ckpt["epoch"] == 3 and {"model", "optimizer", "scheduler", "ema", "rng"} <= set(ckpt)
    torch.load(out / "checkpoint.pt", weights_only=True)


def _held_out_digits(val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The fixed validation split as REFERENCE/trainers.data document it: scikit-learn digits,
    stratified, split seed 0, pixels 0..16 stretched to 0..255 (rebuilt here, not imported)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    _, x_va, _, y_va = train_test_split(images, digits.target, test_size=val_fraction,
                                        stratify=digits.target, random_state=0)
    return x_va, y_va


def _recompute(state: dict, cfg, batch_size: int) -> dict[str, float]:
    """val loss / top-1 / top-5 of `state` on the held-out images, in the trainer's batch order."""
    from trainers import registry
    from trainers.data import eval_transform

    images, labels = _held_out_digits(cfg.data.val_fraction)
    model = registry.build_from_config(cfg.model, num_classes=10, img_size=16)
    model.load_state_dict(state)
    model.eval()
    tf = eval_transform(cfg.aug, 16)
    x = torch.stack([tf(Image.fromarray(img, mode="L").convert("RGB")) for img in images])
    y = torch.as_tensor(labels)
    loss, top1, top5 = 0.0, 0, 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            logits, target = model(x[i:i + batch_size]), y[i:i + batch_size]
            loss += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
            ranked = logits.argsort(dim=1, descending=True)
            top1 += int((ranked[:, 0] == target).sum())
            top5 += int((ranked[:, :5] == target[:, None]).any(dim=1).sum())
    return {"loss": loss / len(y), "top1": top1 / len(y), "top5": top5 / len(y), "n": len(y)}


# configs/digits_cpu.yaml (no Mixup, no RandAugment) shrunk to a 2-block model and 2 epochs, with
# a short EMA: it learns in about 2 s, so its top-1, top-5 and EMA figures all differ.
LEARNS = {"train.epochs": 2, "train.warmup_epochs": 0, "train.batch_size": 32, "train.ema": True,
          "train.ema_decay": 0.95, "model.arch": {"depth": 2, "embed_dim": 32}}


def test_reported_metrics_are_the_saved_model_on_the_validation_split(tmp_path):
    # The last epoch's reported val/* (and val_ema/*) must be what the checkpoint's model (EMA
    # weights) scores on the held-out digits: not the training split, not top-5 as top-1.
    base = yaml.safe_load((ROOT / "configs" / "digits_cpu.yaml").read_text())
    cfg = train_config_from_dict(apply_overrides(base, LEARNS))
    rec = Recorder()
    train(cfg, rec, out_dir=tmp_path)
    reported = rec.calls[-1][1]
    # The names the trainer declares (what a sweep checks its metric against) are what it reports.
    assert set(reported) == metric_names(ema=True) and cfg.train.ema
    # Otherwise the comparisons below could not tell these figures apart.
    assert 0.3 < reported["val/top1"] < reported["val/top5"]
    assert reported["val_ema/top1"] != reported["val/top1"]
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["epoch"] == rec.calls[-1][0] == cfg.train.epochs
    ema = {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}
    for prefix, state in (("val", ckpt["model"]), ("val_ema", ema)):
        got = _recompute(state, cfg, cfg.train.batch_size)
        assert got["n"] == 360  # 20% of 1797, stratified
        assert reported[f"{prefix}/top1"] == got["top1"], prefix
        assert reported[f"{prefix}/top5"] == got["top5"], prefix
        assert reported[f"{prefix}/loss"] == pytest.approx(got["loss"], rel=1e-5), prefix


class _InitCaptured(Exception):
    pass


def _initial_weights(monkeypatch, seed: int) -> dict[str, torch.Tensor]:
    """The model's weights right after the trainer built it (training is cut off there)."""
    from trainers import registry

    build = registry.build_from_config
    seen: dict[str, torch.Tensor] = {}

    def capture(*args, **kwargs):
        seen.update({k: v.clone() for k, v in build(*args, **kwargs).state_dict().items()})
        raise _InitCaptured

    monkeypatch.setattr(registry, "build_from_config", capture)
    with pytest.raises(_InitCaptured):
        train(tiny(seed=seed))
    monkeypatch.setattr(registry, "build_from_config", build)
    return seen


def test_the_seed_decides_the_initial_weights(monkeypatch):
    first, again, other = (_initial_weights(monkeypatch, s) for s in (0, 0, 1))
    trainable = [k for k, v in first.items() if v.is_floating_point() and "running" not in k]
    assert all(torch.equal(first[k], again[k]) for k in first)
    random_init = [k for k in trainable if not torch.equal(first[k], other[k])]
    # Every randomly initialised tensor (weights; BN / LayerNorm affine parts start at 1 and 0)
    # differs between seeds 0 and 1.
    assert "cls_token" in random_init and "head.weight" in random_init
    assert all(k in random_init for k in trainable if k.endswith("qkv.weight"))


def test_same_seed_same_metrics_other_seed_differs(straight):
    _, rec, _ = straight
    again, other = Recorder(), Recorder()
    train(tiny(), again)
    train(tiny(seed=1), other)
    assert [exact(m) for _, m, _ in again.calls] == [exact(m) for _, m, _ in rec.calls]
    assert [exact(m) for _, m, _ in other.calls] != [exact(m) for _, m, _ in rec.calls]
    assert again.calls[0][2] is None  # no out_dir: no checkpoint directory reported


def test_kill_and_resume_equals_uninterrupted(straight, tmp_path):
    _, rec, _ = straight
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), Recorder(stop_after=2), out_dir=tmp_path)
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 2
    resumed = Recorder()
    result = train(tiny(), resumed, out_dir=tmp_path, resume_from=tmp_path / "checkpoint.pt")
    assert [c[0] for c in resumed.calls] == [3]
    assert exact(resumed.calls[0][1]) == exact(rec.calls[2][1])
    assert result.epochs_run == 3 and result.best_top1 == straight[0].best_top1
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [exact(r) for r in rows] == [dict(exact(m), epoch=e) for e, m, _ in rec.calls]


def test_resume_with_a_different_config_is_refused(straight):
    with pytest.raises(ConfigError, match="train.lr"):
        train(tiny(**{"train.lr": 5e-4}), resume_from=straight[2])
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(tiny(), resume_from=straight[2] / "nope")


@pytest.mark.parametrize("mixup", [0.0, 0.8])
def test_the_loss_applies_label_smoothing_with_and_without_mixup(mixup):
    # docs/paper.md section 6: label smoothing 0.1. Without Mixup the criterion smooths; with it,
    # Mixup's soft targets carry the smoothing.
    from trainers.train import _build_step_context

    cfg = tiny(**{"aug.mixup": mixup, "aug.cutmix": 0.0, "aug.label_smoothing": 0.1})
    model = torch.nn.Linear(4, 10)
    ctx = _build_step_context(cfg, model, torch.device("cpu"), 10, 1)
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 10, generator=gen), torch.arange(6)
    want = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    if ctx.mixup is None:
        assert mixup == 0.0
        got = ctx.criterion(logits, y)
    else:
        smooth = torch.full((6, 10), 0.1 / 10)
        smooth[torch.arange(6), y] += 0.9
        assert ctx.mixup.label_smoothing == 0.1
        got = ctx.criterion(logits, smooth)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_absurd_lr_raises_trial_diverged():
    cfg = tiny(**{"train.opt": "sgd", "train.lr": 1e20, "train.warmup_epochs": 0,
                  "train.epochs": 1})
    with pytest.raises(TrialDiverged, match="lower train.lr"):
        train(cfg)


@pytest.mark.parametrize("overrides, match", [
    ({"data.name": "cifar10", "data.root": "/nonexistent/cifar"}, "data.download=true"),
    ({"data.img_size": 18}, "img_size|image size|divisible|patch"),
    ({"model.backbone": "localvit_mikro"}, "localvit_micro"),
    ({"train.batch_size": 2000}, "larger than"),
    ({"train.batch_size": 15}, "even"),
    ({"train.opt": "adamww"}, "adamw"),
    ({"aug.scale": [0.9, 0.5]}, "aug.scale"),
])
def test_bad_config_is_caught_before_training(overrides, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(tiny(**overrides))


@pytest.mark.parametrize("overrides, match", [
    ({"data.name": "mnist"}, "data.name"),
    ({"train.batch_size": 0}, "train.batch_size"),
])
def test_bad_values_are_caught_by_the_schema(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**overrides)


# ------------------------------------------------------------------------------------------ CLI

def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "trainers.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def cli_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(apply_overrides(TINY, {"train.epochs": 4})))
    return path


# Every bad input is covered in-process above; these two show both CLI paths (schema, then
# validate_config) exit 2 before --out exists. Each case is a ~5 s interpreter start.
@pytest.mark.system
@pytest.mark.parametrize("args, match", [
    (["--set", "train.batch_size=0"], "train.batch_size"),
    (["--set", "data.name=cifar100", "--set", "data.root=/no/such/dir"], "/no/such/dir"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(cli_config, tmp_path, args, match):
    out = tmp_path / "run"
    proc = cli("--config", str(cli_config), *args, "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert re.search(match, proc.stderr), proc.stderr
    assert not out.exists()


@pytest.mark.system
def test_cli_trains_is_killed_and_resumes_to_the_same_metrics(cli_config, tmp_path):
    full = tmp_path / "full"
    proc = cli("--config", str(cli_config), "--out", str(full))
    assert proc.returncode == 0, proc.stderr
    assert "val/top1" in proc.stdout and "done: 4 epochs" in proc.stdout
    assert yaml.safe_load((full / "config.yaml").read_text())["train"]["epochs"] == 4
    # An existing run directory is not overwritten without --resume.
    again = cli("--config", str(cli_config), "--out", str(full))
    assert again.returncode == 2 and "--resume" in again.stderr

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "trainers.train", "--config", str(cli_config),
                          "--out", str(killed)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while p.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 1:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done_before_kill = len(read_jsonl(metrics))
    resumed = cli("--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    want = [exact(r) for r in read_jsonl(full / "metrics.jsonl")]
    assert [exact(r) for r in read_jsonl(metrics)] == want
    assert done_before_kill < 4, "the run finished before the kill; the test proved nothing"
