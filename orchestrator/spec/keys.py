"""Dotted keys of a trial config (`model.locality.act`, `train.lr`) as a spec writes them, and
`--set` overrides of the spec itself.

Dotted keys in `baseline`, `axes`, `arms` and `search.space` address the TrainConfig of a trial; a
mapping value is merged into that key (trainers.config.apply_overrides). Each value is checked
here against its field's type and bounds; the plan checks every design point whole.
"""

from __future__ import annotations

import copy
import difflib
import functools
from typing import Any

from pydantic import BaseModel, ValidationError, create_model

from orchestrator.errors import SpecError
from trainers.config import TrainConfig, apply_overrides

__all__ = ["apply_set", "check_train_key", "check_value", "train_keys"]

def train_keys() -> list[str]:
    """Every dotted key of a TrainConfig (`model.locality.act`, `train.lr`, ...)."""
    out: list[str] = []

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, field in cls.model_fields.items():
            path = f"{prefix}{name}"
            out.append(path)
            ann = field.annotation
            for cand in (ann, *getattr(ann, "__args__", ())):
                if isinstance(cand, type) and issubclass(cand, BaseModel):
                    walk(cand, path + ".")

    walk(TrainConfig, "")
    return out


def _has_model(annotation: Any) -> bool:
    """Whether a field's type is (or has a branch that is) a nested config model."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_has_model(a) for a in getattr(annotation, "__args__", ()))


@functools.cache
def _leaf_type(dotted: str) -> type[BaseModel] | None:
    """A one-field model (`value`) holding the leaf TrainConfig field at `dotted`, its type and
    constraints (the field's own FieldInfo), or None (a nested config, whose mapping value is
    partial and checked merged into base, or `model.arch.*`, whose keys depend on the
    backbone)."""
    cls: Any = TrainConfig
    field = None
    for part in dotted.split("."):
        models = [c for c in (cls, *getattr(cls, "__args__", ()))
                  if isinstance(c, type) and issubclass(c, BaseModel)]
        field = models[0].model_fields.get(part) if models else None
        if field is None:
            return None
        cls = field.annotation
    if field is None or field.annotation is None or _has_model(field.annotation):
        return None
    # The FieldInfo itself carries the bounds (gt, le, ...), so no type is built at run time.
    return create_model("LeafValue", value=(field.annotation, copy.copy(field)))


def check_value(dotted: str, value: Any) -> str | None:
    """None if `value` has the type (and meets the bounds) of the TrainConfig field `dotted`,
    else what is wrong, worded as the plan's full check words it."""
    leaf = _leaf_type(dotted)
    if leaf is None:
        return None
    try:
        leaf.model_validate({"value": value})
    except ValidationError as err:
        lines = []
        for e in err.errors():
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(msg if e["type"] == "value_error"
                         else f"{msg} but got {e.get('input')!r}")
        return f"{dotted}: " + "; ".join(dict.fromkeys(lines))
    return None


def check_train_key(dotted: str) -> str | None:
    """None if `dotted` addresses a TrainConfig key, else the reason (with a did-you-mean)."""
    known = train_keys()
    if dotted in known or dotted.startswith("model.arch."):
        return None
    hint = difflib.get_close_matches(dotted, known, n=1, cutoff=0.6)
    fix = f"did you mean '{hint[0]}'?" if hint else "see trainers/config.py for the valid keys"
    return f"unknown trial config key '{dotted}'; {fix}"


# Spec sections whose keys are themselves dotted TrainConfig keys:
# `--set axes.model.locality.act=[hs]`
# addresses the axis `model.locality.act`, not a nested mapping.
_FLAT_SECTIONS = (("axes",), ("baseline",), ("search", "space"))


def apply_set(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    parts = key.split(".")
    for section in _FLAT_SECTIONS:
        n = len(section)
        if tuple(parts[:n]) == section and len(parts) > n:
            out = copy.deepcopy(raw)
            node = out
            for part in section:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise SpecError(f"--set {key}: '{'.'.join(section)}' is not a mapping")
            node[".".join(parts[n:])] = value
            return out
    if parts[0] == "arms" and len(parts) > 2:
        out = copy.deepcopy(raw)
        arm = out.setdefault("arms", {}).setdefault(parts[1], {})
        arm[".".join(parts[2:])] = value
        return out
    return apply_overrides(raw, {key: value})
