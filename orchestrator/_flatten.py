"""Flatten a nested trial config into dotted keys, shared by the MLflow and Parquet sinks.

Both sinks must name a config value the same way (`model.locality.act`), so that a column of
trials.parquet and a param of an MLflow run can be matched by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["flatten_config", "encode_value"]


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"model": {"locality": {"act": "hs"}}}` -> `{"model.locality.act": "hs"}`.

    Lists, None and empty mappings are leaves (`model.arch: {}` stays one key), so a config
    always flattens to the same keys whatever its values.
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_config(value, prefix=f"{dotted}."))
        else:
            out[dotted] = value
    return dict(sorted(out.items()))


def encode_value(value: Any) -> str:
    """A config value as JSON text: unambiguous (`"1"` vs `1`) and decodable with json.loads."""
    return json.dumps(value, sort_keys=True, default=str)
