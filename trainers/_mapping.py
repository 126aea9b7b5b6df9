"""Nested mappings (configs, recipes, specs) as the project reads and combines them: one flatten
to dotted keys and one deep merge, shared by the trainer and the orchestrator."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["deep_merge", "flatten"]


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"model": {"locality": {"act": "hs"}}}` -> `{"model.locality.act": "hs"}`, in the
    mapping's own order. Lists, None and empty mappings are leaves (`model.arch: {}` stays one
    key), so a config always flattens to the same keys whatever its values."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, prefix=f"{dotted}."))
        else:
            out[dotted] = value
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`update` over `base`, mapping by mapping: a mapping merges into a mapping, any other value
    (None included) replaces what is there. Neither argument is changed; the result shares no
    mutable value with them."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
