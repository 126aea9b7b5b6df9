"""A trial as both sides of Ray see it: the result keys the trainable adds to the trainer's
metrics, and `identify`, which turns a trial's Tune config into its planned trial. The worker and
the driver's callback both call it, so they agree on every key; this module imports neither side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.plan.keys import trial_key
from orchestrator.plan.model import PlannedTrial
from trainers.config import TrainConfig

__all__ = ["EPOCH_KEY", "NODE_KEY", "RESOLVED_KEY", "RESTORED_KEY", "ReporterWrapper", "identify",
           "sampled_values"]

# The result key ASHA counts in: the trainer's epoch, which survives a resume unchanged.
EPOCH_KEY = "epoch"
# The Ray node id of the worker that trained the epoch (a string: never taken for a metric).
NODE_KEY = "node_id"
# In a resumed trial's first result: the epochs its checkpoint holds (JSON rows), so that the
# driver records those a killed driver received but never wrote.
RESTORED_KEY = "restored_epochs"
# In a searched trial's Tune config, beside the values the searcher proposed: the trial's
# TrainConfig, resolved and checked once, on the driver, as Tune took the trial
# (orchestrator.tune.tuner.ResolvingSearch). The worker trains it as it is.
RESOLVED_KEY = "resolved_config"


# Wraps a trial's reporter (a trainers.train.Reporter) in another one, given the trial: the hook
# through which instrumentation (the tests' fault injection, tests/trial_faults.py) sees every
# epoch a trial reports. Shipped to the workers with the trainable, so it must pickle.
ReporterWrapper = Callable[[Any, PlannedTrial], Any]


def sampled_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """The values a searcher proposed for a trial, by dotted key (its Tune config without what
    the driver added)."""
    return {k: v for k, v in config.items() if k not in ("trial", RESOLVED_KEY)}


def identify(config: Mapping[str, Any], *,
             configs: Mapping[str, TrainConfig] | None = None) -> PlannedTrial:
    """The planned trial a Tune config stands for (arm, seed, resolved config, key): a planned
    trial's config by its key from `configs` (the plan's, validated there), a searched trial's
    from its config, where the driver put it resolved."""
    if "trial" in config:
        t = config["trial"]
        if configs is None or t["key"] not in configs:
            raise ValueError(f"trial {t['key']} ({t['arm']}, seed {t['seed']}) is not in the "
                             f"plan's configs")
        return PlannedTrial(t["key"], t["arm"], int(t["seed"]), configs[t["key"]],
                            tuple(t["aliases"]))
    cfg = config.get(RESOLVED_KEY)
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"a searched trial's config has no resolved TrainConfig under "
                         f"{RESOLVED_KEY!r}: run searches through the plan's tuner "
                         f"(orchestrator.tune.tuner), whose search resolves each sample")
    return PlannedTrial(trial_key(cfg), "hpo", cfg.seed, cfg)
