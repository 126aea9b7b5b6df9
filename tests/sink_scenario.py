"""A fixed sequence of sink events (three trials: completed, ASHA-stopped, failed) for sink tests.

Real `TrialInfo` / `TrialOutcome` objects with real TrainConfig dicts, fed to real sinks.
"""

from __future__ import annotations

from orchestrator.sinks.base import TrialInfo, TrialOutcome
from trainers.config import apply_overrides, train_config_from_dict

METRIC = "val/top1"
SPEC = {"name": "unit", "base": {"train": {"epochs": 3}}, "seeds": [0, 1],
        "search": {"metric": METRIC, "mode": "max"}}


def _info(key: str, arm: str, seed: int, overrides: dict) -> TrialInfo:
    cfg = train_config_from_dict(apply_overrides({"train": {"epochs": 3}, "seed": seed}, overrides))
    return TrialInfo(key=key, arm=arm, seed=seed, config=cfg.to_dict(),
                     backbone=cfg.model.backbone, tags={"design": "ofat"})


def curve(key: str, n: int) -> list[tuple[str, int, dict]]:
    return [(key, e, {METRIC: 0.5 + 0.1 * e, "train/loss": 1.0 / e, "lr": 1e-3,
              "params": 1300.0})
            for e in range(1, n + 1)]


def scenario():
    """(infos, epochs, outcomes): a completed, an ASHA-stopped and a failed trial."""
    infos = [
        _info("k_base", "baseline", 0, {"model.locality": None}),
        _info("k_relu", "act=relu6", 0, {"model.locality": {"act": "relu6"}}),
        _info("k_fail", "act=hs", 1, {"model.locality": {"act": "hs", "layers": [1, 2]}}),
    ]
    epochs = curve("k_base", 3) + curve("k_relu", 1) + curve("k_fail", 2)
    outcomes = [
        TrialOutcome("k_base", "completed", "completed all 3 epochs", 3, 9.5,
                     final={METRIC: 0.8, "train/loss": 1 / 3}, best={METRIC: 0.8},
                     params=1234, macs=56789),
        TrialOutcome("k_relu", "stopped", "asha: below the rung-1 cutoff at epoch 1", 1, 3.0,
                     final={METRIC: 0.6}, best={METRIC: 0.6}, params=1300, macs=60000),
        TrialOutcome("k_fail", "failed", "RuntimeError: boom", 2, 5.0,
                     final={}, best={}, params=None, macs=None),
    ]
    return infos, epochs, outcomes


def feed(sinks, directory, events=None, finish=True, total=None, prior=()) -> None:
    """Send the events (default: `scenario()`) to one sink or to each of a list, in order;
    `prior`: the trials earlier drivers finished (what the runner hands to `start`)."""
    sinks = sinks if isinstance(sinks, (list, tuple)) else [sinks]
    infos, epochs, outcomes = events or scenario()

    def each(method, *args, **kwargs):
        for sink in sinks:
            getattr(sink, method)(*args, **kwargs)

    each("start", sweep_name="unit", storage_dir=str(directory), spec=SPEC, metric=METRIC,
         mode="max", total_trials=total if total is not None else len(infos), prior=prior)
    for info in infos:
        each("trial_started", info)
    for key, epoch, metrics in epochs:
        each("epoch", key, epoch, metrics)
    for outcome in outcomes:
        each("trial_finished", outcome)
    if finish:
        each("finish")
