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

import pytest
import torch
import yaml

from trainers._checkpoint import load_checkpoint
from trainers.config import ConfigError, apply_overrides, train_config_from_dict
from trainers.train import TrialDiverged, TrialResult, train, validate_config

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
    assert result.params == rec.calls[0][1]["params"] > 0 and result.macs > 0
    # metrics.jsonl: one object per epoch, the reported metrics plus "epoch".
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [{k: v for k, v in r.items() if k != "epoch"} for r in rows] == \
        [m for _, m, _ in rec.calls]
    # The checkpoint loads without pickle and holds the whole training state.
    ckpt = load_checkpoint(out)
    assert ckpt["epoch"] == 3 and {"model", "optimizer", "scheduler", "ema", "rng"} <= set(ckpt)
    torch.load(out / "checkpoint.pt", weights_only=True)


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
