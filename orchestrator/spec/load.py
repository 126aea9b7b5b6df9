"""Read a spec file: YAML, `--set` overrides, the typed model, then the checks across fields.

`load_spec(path, overrides)` returns a frozen `SweepSpec` or raises `SpecError` naming the file,
the key path, what is wrong and how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator.errors import SpecError
from orchestrator.spec.keys import apply_set, check_train_key, check_value
from orchestrator.spec.model import AshaSpec, SweepSpec
from orchestrator.spec.yaml_file import read_yaml
from trainers.config import (
    MAX_SEED,
    ConfigError,
    format_validation_error,
    parse_set_args,
)

__all__ = ["load_spec", "spec_from_dict"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

def _format_spec_error(err: ValidationError, source: str) -> str:
    return "\n".join(format_validation_error(err, SweepSpec, prefix=f"{source}: "))


def _check_semantics(spec: SweepSpec, source: str) -> None:
    """Checks that need more than one field: keys exist, seeds unique, designs consistent."""
    if not _NAME_RE.fullmatch(spec.name):
        raise SpecError(f"{source}: name: must be letters, digits, '.', '_' or '-' (it names a "
                        f"folder and an MLflow experiment) but got {spec.name!r}")
    try:
        spec.base_config  # noqa: B018 - validates base once; the plan starts from the result
    except ConfigError as exc:
        raise SpecError(f"{source}: {_indent(str(exc))}; fix the base trial config") from None
    sections = [("baseline", spec.baseline), ("axes", spec.axes),
                ("search.space", spec.search.space)]
    for arm, overrides in spec.arms.items():
        if not overrides:
            raise SpecError(f"{source}: arms.{arm}: an arm needs at least one override "
                            f"(dotted key: value); an arm equal to base is already planned")
        sections.append((f"arms.{arm}", overrides))
    for section, mapping in sections:
        for key in mapping:
            problem = check_train_key(key)
            if problem:
                raise SpecError(f"{source}: {section}.{key}: {problem}")
    for key, values in spec.axes.items():
        if not values:
            raise SpecError(f"{source}: axes.{key}: empty axis; list at least one value "
                            f"or remove the axis")
    # Each value against its field's type at the edge; the plan then checks every arm whole
    # (merged into base: cross-field rules, the model registry, the data).
    typed = [(f"axes.{key}[{i}]", key, v) for key, values in spec.axes.items()
             for i, v in enumerate(values)]
    typed += [(f"{section}.{key}", key, v) for section, mapping in sections
              if section != "axes" and section != "search.space" for key, v in mapping.items()]
    for where, key, value in typed:
        problem = check_value(key, value)
        if problem:
            raise SpecError(f"{source}: {where}: {problem}")
    seeds = spec.seed_list
    dupes = sorted({s for s in seeds if seeds.count(s) > 1})
    if dupes:
        raise SpecError(f"{source}: seeds: duplicate seed(s) {dupes}; every seed must be unique "
                        f"(every arm runs every seed, so a repeat would run the same trial twice)")
    if any(s < 0 or s > MAX_SEED for s in seeds):
        raise SpecError(f"{source}: seeds: every seed must be between 0 and {MAX_SEED} (32 bits) "
                        f"but got {spec.seeds}")
    _check_seed_rule(spec, source)
    _check_search(spec, source)


def _check_seed_rule(spec: SweepSpec, source: str) -> None:
    """`seeds: {start, max}` adds paired seeds to a designed study's questions; `run.budget`
    caps what it adds."""
    rule, budget = spec.seed_rule, spec.run.budget
    if budget is not None and rule is None:
        raise SpecError(f"{source}: run.budget: caps the seeds a study adds until its questions "
                        f"are decided, but seeds is a fixed list; use seeds: {{start: 3, max: 10}}"
                        f" or remove run.budget")
    if budget is not None and budget.gpu_hours is not None \
            and spec.run.resources_per_trial.gpu <= 0:
        raise SpecError(f"{source}: run.budget.gpu_hours: the trials use no GPU "
                        f"(run.resources_per_trial.gpu is 0); give run.budget.trial_epochs "
                        f"instead")
    if rule is None:
        return
    if spec.search.space:
        raise SpecError(f"{source}: seeds: a rule ({{start, max}}) adds paired seeds to a designed "
                        f"study's questions; a search over search.space takes one seed "
                        f"(seeds: [0])")
    asha = spec.search.asha
    if asha is not None and asha.unit == "trial":
        raise SpecError(f"{source}: search.scheduler.asha.unit: trial-level stopping stops seeds "
                        f"one by one and breaks the pairs that seeds: {{start, max}} adds; use "
                        f"unit: arm (or auto)")


def _check_search(spec: SweepSpec, source: str) -> None:
    search = spec.search
    if search.space and (spec.axes or spec.arms or spec.baseline):
        raise SpecError(f"{source}: search.space: a hyper-parameter search runs over base alone; "
                        f"remove axes/arms/baseline or run the search as a separate sweep")
    if search.optuna is not None:
        if not search.space:
            raise SpecError(f"{source}: search.algorithm: optuna needs search.space "
                            f"(for example train.lr: {{loguniform: [1.0e-4, 3.0e-3]}})")
        grids = [k for k, d in search.space.items() if d.kind == "grid"]
        if grids:
            raise SpecError(f"{source}: search.space.{grids[0]}: grid is not supported by "
                            f"Optuna; use choice instead (or algorithm: none for a grid)")
        if len(spec.seed_list) != 1:
            raise SpecError(f"{source}: seeds: an Optuna search runs each sampled config once; "
                            f"give one seed (seeds: [0]) and re-run the best configs over seeds "
                            f"as arms of a planned sweep")
    elif search.space and len(spec.seed_list) != 1:
        raise SpecError(f"{source}: seeds: a search over search.space takes one seed "
                        f"(seeds: [0]) but got {spec.seeds}")
    asha = search.asha
    if asha is not None and asha.unit == "arm" and search.space:
        raise SpecError(f"{source}: search.scheduler.asha.unit: a search over search.space has no "
                        f"arms (every sample is its own trial); use unit: trial (or auto)")
    if asha is not None and spec.asha_unit == "trial":
        defaults = AshaSpec()
        changed = [k for k in ("rule", "confidence", "margin")
                   if getattr(asha, k) != getattr(defaults, k)]
        if changed:
            key = changed[0]
            raise SpecError(f"{source}: search.scheduler.asha.{key}: applies to arm-level "
                            f"stopping (unit: arm) but this sweep stops single trials "
                            f"(unit: {asha.unit}); remove it or set unit: arm")
    if asha is not None and asha.rule == "paired-test" and spec.asha_unit == "arm" \
            and len(spec.seed_list) < 2:
        raise SpecError(f"{source}: search.scheduler.asha.rule: paired-test compares an arm with "
                        f"its reference over paired seeds and needs at least 2 seeds but got "
                        f"{spec.seeds}; add seeds or use rule: halving")
    if spec.references and search.space:
        raise SpecError(f"{source}: references: a search over search.space has no arms to "
                        f"compare; remove references")
    if spec.compare is not None and search.space:
        raise SpecError(f"{source}: compare: a search over search.space has no arms to "
                        f"compare; remove compare")
    if not search.space and search.num_samples != 1:
        raise SpecError(f"{source}: search.num_samples: only a search.space is sampled; a planned "
                        f"design runs every arm x seed once, so remove num_samples")


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


def spec_from_dict(raw: Mapping[str, Any], *, source: str = "spec") -> SweepSpec:
    """Validate a spec mapping (already parsed and overridden) into a SweepSpec."""
    try:
        spec = SweepSpec.model_validate(dict(raw))
    except ValidationError as err:
        raise SpecError(_format_spec_error(err, source)) from None
    _check_semantics(spec, source)
    return spec


def load_spec(path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()) -> SweepSpec:
    """Read a spec YAML, apply `--set key=value` overrides (spec-level dotted keys), validate.

    Overrides address the spec, e.g. `base.train.lr=1e-3`, `seeds=[0]`, `run.storage=/tmp/s`,
    `axes.model.locality.act=[hs,relu6]`, `search.scheduler=none`.
    """
    path = Path(path)
    raw = read_yaml(path)
    source = path.name
    if overrides:
        try:
            items = parse_set_args(list(overrides)) if not isinstance(overrides, Mapping) \
                else dict(overrides)
        except ConfigError as exc:
            raise SpecError(str(exc)) from None
        for key, value in items.items():
            raw = apply_set(raw, key, value)
    return spec_from_dict(raw, source=source)
