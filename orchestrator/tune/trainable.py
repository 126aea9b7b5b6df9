"""The Ray Tune function trainable: a thin adapter from a Tune trial to `trainers.train.train`.

A trial's Tune config is plain data plus, for a search, its resolved config. For a planned design
it is `{"trial": {key, arm, seed, epochs, aliases}}` (one grid point per arm x seed) and its
TrainConfig, validated at planning, comes by key from the plan's configs (shipped with
`tune.with_parameters`); for a search it is the sampled values by dotted key and the TrainConfig
the driver resolved from them as Tune took the trial. Either way the worker trains it without
checking it again. `identify` turns either into the trial's identity, and the driver's callback
uses the same function, so worker and driver agree on every key. The trainable sets torch's
thread count to the trial's CPUs (reused actors keep the previous trial's count otherwise),
resumes from Tune's checkpoint when there is one, and reports each epoch's metrics with the
trainer's checkpoint directory.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import torch
from ray import tune

from orchestrator._files import process_alive
from orchestrator.tune.trial import (
    EPOCH_KEY,
    NODE_KEY,
    RESTORED_KEY,
    ReporterWrapper,
    identify,
)
from trainers.train import METRICS_FILE, train

if TYPE_CHECKING:
    from trainers.config import TrainConfig

__all__ = ["TuneReporter", "fit_to_resources", "run_trial"]

class TuneReporter:
    """trainers.train.Reporter that forwards each epoch to Ray Tune with its checkpoint; the
    first result after a resume also carries the epochs the checkpoint holds (`restored`, the
    trainer's metrics.jsonl text)."""

    def __init__(self, restored: str | None = None):
        self._restored = restored

    def report(self, metrics: dict[str, float], *, epoch: int, checkpoint_dir: str | None) -> None:
        result: dict[str, Any] = {**metrics, EPOCH_KEY: epoch,
                                  NODE_KEY: ray.get_runtime_context().get_node_id()}
        if self._restored is not None:
            result[RESTORED_KEY], self._restored = self._restored, None
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(result, checkpoint=checkpoint)


def _trial_resources() -> tuple[int, float] | None:
    """(CPUs, GPUs) Ray gave this trial, or None outside a trial (a direct call in a test)."""
    try:
        resources = tune.get_context().get_trial_resources().required_resources
    except Exception:  # noqa: BLE001 - outside a trial: torch's defaults
        return None
    return max(1, int(resources.get("CPU", 1))), float(resources.get("GPU", 0))


def fit_to_resources(cfg: TrainConfig, cpus: int, gpus: float) -> TrainConfig:
    """The trial's TrainConfig on what Ray gave it: torch threads = its CPUs, at most CPUs - 1
    data-loader workers (the training process needs one), and the CPU when it was given no GPU
    (`device: auto` would otherwise take a GPU of the node that Ray gave to another trial).
    Ray makes a trial's GPUs, whole or a fraction, the only visible ones, so `cuda` is its own.
    Only runtime keys change, which resuming a checkpoint does not compare (a retried trial may
    land on a node of another kind)."""
    data = cfg.data.model_copy(update={"num_workers": min(cfg.data.num_workers, cpus - 1)})
    update: dict[str, Any] = {"threads": cpus, "data": data}
    if gpus <= 0 and cfg.device == "auto":
        update["device"] = "cpu"
    return cfg.model_copy(update=update)


def run_trial(config: dict[str, Any], configs: Mapping[str, TrainConfig] | None = None,
              wrap_reporter: ReporterWrapper | None = None) -> None:
    """Tune entry point: train one trial, resuming from Tune's latest checkpoint if any. Its
    config was validated on the driver (a design's when the plan was built, a sample's when
    Tune took the trial): it is not checked again here."""
    trial = identify(config, configs=configs)

    def reporter(restored: str | None = None) -> Any:
        tune_reporter = TuneReporter(restored)
        return tune_reporter if wrap_reporter is None else wrap_reporter(tune_reporter, trial)

    cfg = trial.config
    given = _trial_resources()
    if given is not None:
        torch.set_num_threads(given[0])
        cfg = fit_to_resources(cfg, *given)
    checkpoint = tune.get_checkpoint()
    out_dir = _trial_folder(trial.key)
    try:
        if checkpoint is None:
            train(cfg, reporter(), out_dir=out_dir, checked=True)
        else:
            with checkpoint.as_directory() as ckpt_dir:
                history = Path(ckpt_dir) / METRICS_FILE
                restored = history.read_text() if history.is_file() else None
                train(cfg, reporter(restored), out_dir=out_dir,
                      resume_from=ckpt_dir, checked=True)
    finally:
        # Tune has copied every reported checkpoint into the sweep's storage already.
        shutil.rmtree(out_dir, ignore_errors=True)


# A trial's own folder: tempdir/trial-<key>-<worker pid>-<random>.
_TRIAL_FOLDER = re.compile(r"trial-[0-9a-f]+-(\d+)-[a-z0-9_]+")


def _trial_folder(key: str) -> Path:
    """A new folder for a trial's own files (each checkpoint, until Tune has copied it). A trial
    removes its folder when it ends, but a worker killed with its driver, its node or its actor
    cannot: the folders of worker processes no longer alive are removed first, so a machine that
    runs sweep after sweep does not fill its temporary folder with checkpoints."""
    for folder in Path(tempfile.gettempdir()).glob("trial-*"):
        match = _TRIAL_FOLDER.fullmatch(folder.name)
        if match and not process_alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"trial-{key}-{os.getpid()}-"))
