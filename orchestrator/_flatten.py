"""Flatten a nested trial config into dotted keys, shared by the MLflow and Parquet sinks.

Both sinks must name a config value the same way (`model.locality.act`), so that a column of
trials.parquet and a param of an MLflow run can be matched by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from trainers._mapping import flatten

__all__ = ["flatten_config", "encode_value"]


def flatten_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config under dotted keys (trainers._mapping.flatten), sorted by key."""
    return dict(sorted(flatten(config).items()))


def encode_value(value: Any) -> str:
    """A config value as JSON text: unambiguous (`"1"` vs `1`) and decodable with json.loads."""
    return json.dumps(value, sort_keys=True, default=str)
