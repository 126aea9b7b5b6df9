"""The Ray Tune function trainable: a thin adapter from a Tune trial to `trainers.train.train`.

A trial's Tune config is plain data. For a planned design it is `{"trial": {key, arm, seed,
epochs, aliases}}` (one grid point per arm x seed) and its TrainConfig, validated at planning,
comes by key from the plan's configs (shipped with `tune.with_parameters`), so the worker trains it
without checking it again; for a search it is the sampled values by dotted key, which the plan's
SampleResolver (shipped the same way) turns into the trial's config. `identify` turns either into
the trial's identity, and the driver's callback uses the same function, so worker and driver agree
on every key. The trainable sets torch's thread count to the trial's CPUs (reused actors keep the
previous trial's count otherwise), resumes from Tune's checkpoint when there is one, and reports
each epoch's metrics with the trainer's checkpoint directory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.plan.keys import trial_key
from orchestrator.plan.model import PlannedTrial, SampleResolver

if TYPE_CHECKING:
    from trainers.config import TrainConfig

__all__ = ["EPOCH_KEY", "FAULT_ENV", "NODE_KEY", "RESTORED_KEY", "InjectedFault", "TuneReporter",
           "fit_to_resources", "identify", "run_trial"]

# The result key ASHA counts in: the trainer's epoch, which survives a resume unchanged.
EPOCH_KEY = "epoch"
# The Ray node id of the worker that trained the epoch (a string: never taken for a metric).
NODE_KEY = "node_id"
# In a resumed trial's first result: the epochs its checkpoint holds (JSON rows), so that the
# driver records those a killed driver received but never wrote.
RESTORED_KEY = "restored_epochs"

# Test-only fault injection, never set in normal use: read by the driver when the sweep starts
# and shipped to the trials. `ARM/SEED@EPOCH*TIMES;...:DIR`: the trial of that arm and seed raises
# InjectedFault right after reporting an epoch >= EPOCH (its checkpoint saved), TIMES times in
# all (a retry resumes past the epoch that failed); DIR keeps one marker file per firing, so the
# count survives Tune's retries.
FAULT_ENV = "ORCHESTRATOR_TEST_FAULTS"


class InjectedFault(RuntimeError):
    """The failure that FAULT_ENV asked for (tests only)."""


def parse_faults(value: str | None) -> tuple[dict[tuple[str, int], tuple[int, int]], str] | None:
    """FAULT_ENV's value -> ({(arm, seed): (epoch, times)}, marker dir), or None when unset."""
    if not value:
        return None
    entries, _, marker_dir = value.rpartition(":")
    faults = {}
    for entry in filter(None, entries.split(";")):
        who, _, when = entry.partition("@")
        arm, _, seed = who.rpartition("/")
        epoch, _, times = when.partition("*")
        faults[(arm, int(seed))] = (int(epoch), int(times or 1))
    return faults, marker_dir


class _FaultyReporter:
    """Forwards to Tune, then raises InjectedFault after the chosen epoch (tests only)."""

    def __init__(self, inner: Any, trial: PlannedTrial, epoch: int, times: int, marker_dir: str):
        self._inner, self._trial, self._epoch, self._times = inner, trial, epoch, times
        self._dir = Path(marker_dir)

    def report(self, metrics: dict[str, float], *, epoch: int, checkpoint_dir: str | None) -> None:
        self._inner.report(metrics, epoch=epoch, checkpoint_dir=checkpoint_dir)
        if epoch < self._epoch:
            return
        fired = sorted(self._dir.glob(f"{self._trial.key}-*"))
        if len(fired) < self._times:
            (self._dir / f"{self._trial.key}-{len(fired) + 1}").touch()
            raise InjectedFault(f"injected fault {len(fired) + 1} of {self._times} after epoch "
                                f"{epoch} of {self._trial.arm}/seed{self._trial.seed}")


def identify(config: Mapping[str, Any], *, configs: Mapping[str, TrainConfig] | None = None,
             sampler: SampleResolver | None = None) -> PlannedTrial:
    """The planned trial a Tune config stands for (arm, seed, resolved config, key): a planned
    trial's config by its key from `configs` (the plan's, validated there), a search sample's
    from `sampler`."""
    if "trial" in config:
        t = config["trial"]
        if configs is None or t["key"] not in configs:
            raise ValueError(f"trial {t['key']} ({t['arm']}, seed {t['seed']}) is not in the "
                             f"plan's configs")
        return PlannedTrial(t["key"], t["arm"], int(t["seed"]), configs[t["key"]],
                            tuple(t["aliases"]))
    if sampler is None:
        raise ValueError("a sampled trial config needs the search base it was sampled into")
    cfg = sampler({k: v for k, v in config.items() if k != "trial"})
    return PlannedTrial(trial_key(cfg), "hpo", cfg.seed, cfg)


class TuneReporter:
    """trainers.train.Reporter that forwards each epoch to Ray Tune with its checkpoint; the
    first result after a resume also carries the epochs the checkpoint holds (`restored`, the
    trainer's metrics.jsonl text)."""

    def __init__(self, restored: str | None = None):
        self._restored = restored

    def report(self, metrics: dict[str, float], *, epoch: int, checkpoint_dir: str | None) -> None:
        import ray
        from ray import tune

        result: dict[str, Any] = {**metrics, EPOCH_KEY: epoch,
                                  NODE_KEY: ray.get_runtime_context().get_node_id()}
        if self._restored is not None:
            result[RESTORED_KEY], self._restored = self._restored, None
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(result, checkpoint=checkpoint)


def _trial_resources() -> tuple[int, float] | None:
    """(CPUs, GPUs) Ray gave this trial, or None outside a trial (a direct call in a test)."""
    from ray import tune

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


def _reporter(trial: PlannedTrial, faults: str | None, restored: str | None = None) -> Any:
    reporter: Any = TuneReporter(restored)
    injected = parse_faults(faults)
    if injected and (trial.arm, trial.seed) in injected[0]:
        reporter = _FaultyReporter(reporter, trial, *injected[0][(trial.arm, trial.seed)],
                                   marker_dir=injected[1])
    return reporter


def run_trial(config: dict[str, Any], configs: Mapping[str, TrainConfig] | None = None,
              sampler: SampleResolver | None = None, faults: str | None = None) -> None:
    """Tune entry point: train one trial, resuming from Tune's latest checkpoint if any. Its
    config was validated when the plan was built (a sample's by the sampler): it is not checked
    again here."""
    import torch
    from ray import tune

    from trainers.train import METRICS_FILE, train

    trial = identify(config, configs=configs, sampler=sampler)
    cfg = trial.config
    given = _trial_resources()
    if given is not None:
        torch.set_num_threads(given[0])
        cfg = fit_to_resources(cfg, *given)
    checkpoint = tune.get_checkpoint()
    out_dir = Path(tempfile.mkdtemp(prefix=f"trial-{trial.key}-"))
    try:
        if checkpoint is None:
            train(cfg, _reporter(trial, faults), out_dir=out_dir, checked=True)
        else:
            with checkpoint.as_directory() as ckpt_dir:
                history = Path(ckpt_dir) / METRICS_FILE
                restored = history.read_text() if history.is_file() else None
                train(cfg, _reporter(trial, faults, restored), out_dir=out_dir,
                      resume_from=ckpt_dir, checked=True)
    finally:
        # Tune has copied every reported checkpoint into the sweep's storage already.
        shutil.rmtree(out_dir, ignore_errors=True)
