"""The design's points and their arm names.

- `baseline`: base + the `baseline` overrides, named "baseline" (the reference arm).
- `ofat` (one factor at a time): the `base` arm itself (named by `base_arm`, default "base": the
  centre point) plus one arm per axis value applied to base alone, named `<short key>=<value>`
  (`act=relu6`, `layers=1-4`), or by the mapping's items when the value is a mapping
  (`expansion=2,reduction=96`). A `model.backbone` axis names its arms after the backbones
  (`localvit_pvt_tiny`, with `backbone=localvit_pvt_tiny` kept as an alias), unless an arm of
  `arms` has that name. Every ofat arm differs from base in exactly one factor.
- `factorial`: one arm per combination of all axes' values applied to base
  (`act=relu6,layers=1-4`, `localvit_tiny,act=relu6`); base itself is not an arm unless a
  combination equals it.
- `arms`: explicit named arms (base + their overrides) for one-off controls.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.errors import PlanError
from orchestrator.spec.model import SweepSpec
from trainers._mapping import flatten

__all__ = ["Point", "design_points", "format_overrides"]

def _render(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_render(v) for v in value) + "]"
    return str(value)


def _short_names(keys: Iterable[str]) -> dict[str, str]:
    """`model.locality.act` -> `act`, unless two axes share a last part (then the full key)."""
    keys = list(keys)
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def format_overrides(overrides: Mapping[str, Any]) -> list[str]:
    """Dotted overrides as `key=value` items, mappings spelled out key by key, values as in arm
    names (`model.locality=none`, `model.locality.expansion=2`)."""
    out = []
    for key, value in overrides.items():
        if isinstance(value, Mapping) and value:
            out += [f"{key}.{k}={_render(v)}" for k, v in flatten(value).items()]
        else:
            out.append(f"{key}={_render(value)}")
    return out


def _label(short: str, value: Any) -> str:
    if isinstance(value, Mapping) and value:
        return ",".join(f"{k}={_render(v)}" for k, v in flatten(value).items())
    return f"{short}={_render(value)}"


_BACKBONE = "model.backbone"


def _labels(key: str, short: str, value: Any, taken: set[str]) -> tuple[str, str]:
    """(name part, its `key=value` spelling) of one axis value: a backbone axis's value is its
    own name unless `taken` (the spec's own arm names) has it."""
    label = _label(short, value)
    if key == _BACKBONE and isinstance(value, str) and value not in taken:
        return value, label
    return label, label


Point = tuple[str, dict[str, Any], str, dict[str, Any], tuple[str, ...]]


def design_points(spec: SweepSpec, source: str) -> list[Point]:
    """(arm name, overrides, spec key path for error messages, axis factors, other names of the
    point) in naming-priority order."""
    points: list[Point] = [("baseline", dict(spec.baseline), "baseline", {}, ())]
    short = _short_names(spec.axes)
    taken = set(spec.arms)

    def other(name: str, spelled: str) -> tuple[str, ...]:
        return (spelled,) if spelled != name else ()

    if spec.design == "ofat":
        points.append((spec.base_arm, {}, "base", {}, ()))
        for key, values in spec.axes.items():
            for i, value in enumerate(values):
                name, spelled = _labels(key, short[key], value, taken)
                points.append((name, {key: value}, f"axes.{key}[{i}]", {key: value},
                               other(name, spelled)))
    elif spec.axes:
        keys = list(spec.axes)
        for combo in itertools.product(*(list(enumerate(spec.axes[k])) for k in keys)):
            parts = [_labels(k, short[k], v, taken) for k, (_, v) in zip(keys, combo, strict=True)]
            name, spelled = ",".join(n for n, _ in parts), ",".join(s for _, s in parts)
            where = ("axes ("
                     + ", ".join(f"{k}[{i}]" for k, (i, _) in zip(keys, combo, strict=True)) + ")")
            factors = {k: v for k, (_, v) in zip(keys, combo, strict=True)}
            points.append((name, factors, where, dict(factors), other(name, spelled)))
    auto = {p[0] for p in points}
    for name, overrides in spec.arms.items():
        if name in auto:
            raise PlanError(f"{source}: arms.{name}: this name is already an arm of the design; "
                            f"rename it")
        points.append((name, dict(overrides), f"arms.{name}", {}, ()))
    return points
