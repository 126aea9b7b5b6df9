"""Trial keys: a short digest of a trial's resolved config, stable across machines.

The same study on a laptop and on a cluster has the same trial keys: execution-only settings
(threads, data loader workers) are left out of the digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from trainers.config import TrainConfig

__all__ = ["seed_keys", "trial_key"]

# Execution-only settings: they do not change what a trial computes, so they stay out of its key
# (the same study on a laptop and on a cluster has the same trial keys).
_EXECUTION_KEYS = (("threads",), ("data", "num_workers"))


def trial_key(config: TrainConfig | Mapping[str, Any]) -> str:
    """12 hex digits of the sha256 of the canonical JSON of a resolved config (seed included)."""
    return _digest(_canonical(_key_data(config)))


def _key_data(config: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, TrainConfig):
        config = config.to_dict()
    data = json.loads(json.dumps(config))
    for path in _EXECUTION_KEYS:
        node = data
        for part in path[:-1]:
            node = node.get(part, {})
        node.pop(path[-1], None)
    return data


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _digest(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def seed_keys(config: TrainConfig, seeds: Iterable[int]) -> list[str]:
    """[trial_key(dict(config, seed=s)) for s in seeds], the config serialised once, not once per
    seed (a 400-arm x 25-seed plan: 0.35 s -> 0.03 s). The canonical JSON of the top-level dict is
    its items, sorted by key, each `"key":value`, joined by commas, as json.dumps writes it."""
    data = _key_data(config)
    data.pop("seed", None)
    items = {k: f"{_canonical(k)}:{_canonical(v)}" for k, v in data.items()}
    keys = []
    for seed in seeds:
        parts = {**items, "seed": f'"seed":{_canonical(seed)}'}
        keys.append(_digest("{" + ",".join(parts[k] for k in sorted(parts)) + "}"))
    return keys
