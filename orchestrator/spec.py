"""The sweep spec: one YAML file, typed and validated at the edge.

A spec has four roles (see DESIGN.md): `base` (the fixed trial config, a TrainConfig), the design
(`baseline`, `axes`, `arms`, `design`, `seeds`), `search` (metric, ASHA, an optional Optuna space)
and `run` (resources, concurrency, storage). `load_spec(path, overrides)` reads the YAML, applies
`--set` overrides, and returns a frozen `SweepSpec`, or raises `SpecError` naming the file, the
key path, what is wrong and how to fix it. Whether every planned trial is a valid training run
(model exists, layer range fits, ...) is checked by `plan.build_plan`.

Dotted keys (`model.locality.act`) in `baseline`, `axes`, `arms` and `search.space` address the
TrainConfig of a trial; a mapping value is merged into that key (trainers.config.apply_overrides).
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from orchestrator._yaml import read_yaml
from orchestrator.errors import SpecError
from trainers.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    format_validation_error,
    parse_set_args,
    train_config_from_dict,
)

__all__ = [
    "AshaSpec",
    "DomainSpec",
    "OptunaSpec",
    "ResourcesSpec",
    "RunSpec",
    "SearchSpec",
    "SweepSpec",
    "load_spec",
    "spec_from_dict",
    "train_keys",
]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class AshaSpec(_Strict):
    """Successive halving in epochs: rungs at grace_period x reduction_factor^k below max_t (the
    trial config's train.epochs).

    `unit` says what is judged at a rung. `arm` (the default for a designed study with more than
    one seed): whole arms, on their mean over seeds, once every live arm's seeds have reached the
    rung; an arm goes on or stops with all its seeds, and the reference arms (baseline, base arm,
    every arm named in `references`) always go on (orchestrator/arm_scheduler.py). `trial` (the
    default for a search or a single seed): Ray's asynchronous ASHA, each trial on its own.
    `rule` (arm unit only): `halving` keeps the top 1/reduction_factor of the live arms at each
    rung; `paired-test` stops an arm when a one-sided paired t-test over its seeds says it is worse
    than its reference by more than `margin` (metric units) at `confidence`.
    """

    grace_period: int = Field(default=1, gt=0, le=100_000)
    reduction_factor: float = Field(default=3, gt=1)
    unit: Literal["auto", "arm", "trial"] = "auto"
    rule: Literal["halving", "paired-test"] = "halving"
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    margin: float = Field(default=0.0, ge=0.0)


class SchedulerSpec(_Strict):
    asha: AshaSpec | None = None


class OptunaSpec(_Strict):
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = Field(default=0, ge=0)


class AlgorithmSpec(_Strict):
    optuna: OptunaSpec | None = None


_DOMAINS = ("choice", "grid", "uniform", "loguniform", "randint")


class DomainSpec(_Strict):
    """One searched key: exactly one of the five kinds."""

    choice: list[Any] | None = Field(default=None, min_length=1)
    grid: list[Any] | None = Field(default=None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    # Inclusive bounds [low, high].
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DomainSpec:
        given = [k for k in _DOMAINS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(_DOMAINS)} (got {given or 'none'})")
        kind = given[0]
        if kind in ("uniform", "loguniform", "randint"):
            lo, hi = getattr(self, kind)
            if not lo < hi:
                raise ValueError(f"{kind} needs [low, high] with low < high but got [{lo}, {hi}]")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform needs low > 0 but got {lo}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in _DOMAINS if getattr(self, k) is not None)

    @property
    def values(self) -> Any:
        return getattr(self, self.kind)


class SearchSpec(_Strict):
    metric: str = "val/top1"
    mode: Literal["max", "min"] = "max"
    # `none` (or null) runs every trial to train.epochs; {asha: {...}} stops hopeless ones early.
    scheduler: Literal["none"] | None | SchedulerSpec = None
    # Hyper-parameters to search (dotted TrainConfig keys); empty for a planned design.
    space: dict[str, DomainSpec] = Field(default_factory=dict)
    algorithm: Literal["none"] | None | AlgorithmSpec = None
    # Samples drawn from `space` (each grid point counts once per sample without an algorithm).
    num_samples: int = Field(default=1, gt=0, le=100_000)

    @property
    def asha(self) -> AshaSpec | None:
        return self.scheduler.asha if isinstance(self.scheduler, SchedulerSpec) else None

    @property
    def optuna(self) -> OptunaSpec | None:
        return self.algorithm.optuna if isinstance(self.algorithm, AlgorithmSpec) else None


# URI schemes pyarrow (and so Ray Tune) can store an experiment at.
TUNE_STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file")


class ResourcesSpec(_Strict):
    cpu: float = Field(default=1, gt=0)
    # Fractional GPUs (0.5) pack several trials on one device.
    gpu: float = Field(default=0, ge=0)


class RunSpec(_Strict):
    resources_per_trial: ResourcesSpec = Field(default_factory=ResourcesSpec)
    # None: as many as the cluster's resources allow.
    max_concurrent: int | None = Field(default=None, gt=0)
    storage: str = "./sweeps"
    # Where Ray Tune keeps the experiment state and the trials' checkpoints. None: the sweep's
    # own folder (`<storage>/<name>/tune`), which only one machine sees. On a cluster of several
    # nodes it must be storage every node reaches: a shared mount, or an s3:// / gs:// URI
    # (pyarrow filesystems, as Ray Tune uses them). Parquet, spec.yaml, the report and the
    # default MLflow store stay in `storage`, on the driver's machine.
    tune_storage: str | None = None
    # Times a failed trial is retried from its last checkpoint before it counts as failed.
    max_failures: int = Field(default=0, ge=0, le=1000)
    checkpoints_to_keep: int = Field(default=1, gt=0)

    @field_validator("tune_storage")
    @classmethod
    def _tune_storage_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", value)
        if not value.strip():
            raise ValueError("must not be empty; leave it out to keep Tune's state in the sweep's "
                             "folder")
        if scheme is None:
            if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", value):
                raise ValueError(f"{value!r} looks like a URI with a missing slash; write "
                                 f"s3://bucket/prefix or gs://bucket/prefix")
            return value
        if scheme.group(1).lower() not in TUNE_STORAGE_SCHEMES:
            raise ValueError(f"{value!r}: Ray Tune cannot keep checkpoints at a "
                             f"{scheme.group(1)}:// address; use a folder every node sees or "
                             f"one of {', '.join(s + '://' for s in TUNE_STORAGE_SCHEMES)}")
        if not scheme.group(2).strip("/"):
            raise ValueError(f"{value!r} names no bucket; write {scheme.group(1)}://bucket/prefix")
        return value.rstrip("/")


class SweepSpec(_Strict):
    name: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    baseline: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    arms: dict[str, dict[str, Any]] = Field(default_factory=dict)
    design: Literal["ofat", "factorial"] = "ofat"
    # Name of the arm that is base itself (the centre point of an ofat design).
    base_arm: str = "base"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    # arm -> the arm it is measured against (its own backbone's baseline, for instance); every
    # other arm is measured against `baseline`. Reference arms are never stopped early.
    references: dict[str, str] = Field(default_factory=dict)
    # The study's questions (orchestrator/questions.py): a rule (`references`, `leaves`) or a
    # list of {arm: reference} pairs; absent: every arm against its reference.
    compare: str | list[dict[str, str]] | None = None
    search: SearchSpec = Field(default_factory=SearchSpec)
    run: RunSpec = Field(default_factory=RunSpec)

    @field_validator("compare", mode="before")
    @classmethod
    def _compare_shape(cls, value: Any) -> Any:
        from orchestrator.questions import check_compare

        return check_compare(value)

    @property
    def asha_unit(self) -> str | None:
        """`arm`, `trial`, or None without ASHA; `auto` resolved (arm for a designed study with
        more than one seed)."""
        asha = self.search.asha
        if asha is None:
            return None
        if asha.unit != "auto":
            return asha.unit
        return "arm" if not self.search.space and len(self.seeds) > 1 else "trial"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ------------------------------------------------------------------------------- dotted key paths

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


def _check_value(dotted: str, value: Any) -> str | None:
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


def _check_train_key(dotted: str) -> str | None:
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


def _apply_set(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
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


# ------------------------------------------------------------------------------------ validation

def _format_spec_error(err: ValidationError, source: str) -> str:
    return "\n".join(format_validation_error(err, SweepSpec, prefix=f"{source}: "))


def _check_semantics(spec: SweepSpec, source: str) -> None:
    """Checks that need more than one field: keys exist, seeds unique, designs consistent."""
    if not _NAME_RE.fullmatch(spec.name):
        raise SpecError(f"{source}: name: must be letters, digits, '.', '_' or '-' (it names a "
                        f"folder and an MLflow experiment) but got {spec.name!r}")
    try:
        train_config_from_dict(spec.base, source="base")
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
            problem = _check_train_key(key)
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
        problem = _check_value(key, value)
        if problem:
            raise SpecError(f"{source}: {where}: {problem}")
    dupes = sorted({s for s in spec.seeds if spec.seeds.count(s) > 1})
    if dupes:
        raise SpecError(f"{source}: seeds: duplicate seed(s) {dupes}; every seed must be unique "
                        f"(every arm runs every seed, so a repeat would run the same trial twice)")
    from trainers.config import MAX_SEED

    if any(s < 0 or s > MAX_SEED for s in spec.seeds):
        raise SpecError(f"{source}: seeds: every seed must be between 0 and {MAX_SEED} (32 bits) "
                        f"but got {spec.seeds}")
    _check_search(spec, source)


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
        if len(spec.seeds) != 1:
            raise SpecError(f"{source}: seeds: an Optuna search runs each sampled config once; "
                            f"give one seed (seeds: [0]) and re-run the best configs over seeds "
                            f"as arms of a planned sweep")
    elif search.space and len(spec.seeds) != 1:
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
            and len(spec.seeds) < 2:
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
            raw = _apply_set(raw, key, value)
    return spec_from_dict(raw, source=source)
