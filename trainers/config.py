"""The typed configuration of one training run (one sweep trial).

`TrainConfig` is the single schema shared by `python -m trainers.train`, the sweep spec's `base`
section and every arm the sweep plans: YAML, `--set key=value` overrides and search-space samples
all become a `TrainConfig` here, so an unknown key or a wrong type is caught once, at the edge,
with its dotted key path. `recipe` names a preset of training values (trainers/recipes.py: the
paper's DeiT recipe, digits_cpu, cifar) that applies under the explicit values; by default the one
that fits `data.name`. The field defaults are the DeiT recipe's (docs/paper.md section 6).

The models are frozen pydantic models: hashable, picklable, safe to ship to Ray workers.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_type_hints

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from trainers._mapping import deep_merge, flatten
from trainers._yaml import load_yaml
from trainers.errors import ConfigError, ModelConfigError
from trainers.locality import ACTIVATIONS, KNOB_CHECKS, LocalitySpec
from trainers.recipes import AUTO, RECIPES, apply_recipe, check_recipe_name, get_recipe

__all__ = [
    "ACTIVATIONS",
    "DATASETS",
    "AugConfig",
    "ConfigError",
    "DataConfig",
    "LocalityConfig",
    "ModelConfig",
    "ModelConfigError",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "field_names",
    "format_validation_error",
    "parse_set_args",
    "switch_recipe",
    "train_config_from_dict",
]

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "synthetic")


# Bounds that catch a typo (1e23 epochs, a seed numpy cannot take) before a run starts.
MAX_EPOCHS = 100_000
MAX_SEED = 2**32 - 1        # numpy's and Python's random seeding take 32-bit seeds everywhere


class _Frozen(BaseModel):
    # Non-finite floats (.inf, .nan) are never a valid learning rate, decay or probability.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _knob_field(name: str, annotation: Any) -> tuple[Any, None]:
    """An optional pydantic field with the knob's own annotation and check (trainers.locality)."""

    def check(value: Any) -> Any:
        if value is not None:
            KNOB_CHECKS[name](value)  # ValueError -> a validation error at model.locality.<name>
        return value

    return Annotated[annotation, AfterValidator(check)] | None, None


# Locality FFN knobs over the model variant's (a field left None inherits the variant's value).
# Derived from LocalitySpec, so the knobs, their types and their allowed values live in one place.
if TYPE_CHECKING:
    # What a type checker sees: a class it can use in annotations (create_model's result is a
    # variable), whose fields (LocalitySpec's, made at run time) read as Any.
    class LocalityConfig(_Frozen):
        def __getattr__(self, name: str) -> Any: ...
else:
    LocalityConfig = create_model(
        "LocalityConfig",
        __base__=_Frozen,
        __doc__="Locality FFN knobs over the variant's; a field left None inherits the variant's "
                "value. The fields and checks are LocalitySpec's (trainers/locality.py).",
        __module__=__name__,
        **{f.name: _knob_field(f.name, get_type_hints(LocalitySpec)[f.name])
           for f in fields(LocalitySpec)},
    )


class ModelConfig(_Frozen):
    backbone: str = "localvit_micro"
    # "default": the variant's own locality (none for a plain backbone); null: no locality FFN;
    # a mapping: locality on, these knobs over the family's defaults.
    locality: Literal["default"] | None | LocalityConfig = "default"
    drop_path: float | None = Field(default=None, ge=0.0, lt=1.0)
    # Architecture overrides passed to create_model (e.g. mlp_ratio: 6, num_heads: 4).
    arch: dict[str, Any] = Field(default_factory=dict)


class DataConfig(_Frozen):
    name: Literal["digits", "cifar10", "cifar100", "imagefolder", "synthetic"] = "digits"
    root: str | None = None
    download: bool = False
    # Input resolution; None takes the model variant's default.
    img_size: int | None = Field(default=None, gt=0)
    num_workers: int = Field(default=0, ge=0)
    # digits: fraction held out for validation (fixed stratified split).
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    # synthetic: sizes of the random dataset.
    synthetic_train: int = Field(default=512, gt=0)
    synthetic_val: int = Field(default=128, gt=0)
    synthetic_classes: int = Field(default=10, gt=1)


class OptimConfig(_Frozen):
    epochs: int = Field(default=300, gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(default=1024, gt=0, le=2**20)
    opt: str = "adamw"
    # Absolute learning rate; None uses the recipe's base_lr * batch_size / 512.
    lr: float | None = Field(default=None, gt=0.0)
    base_lr: float = Field(default=5e-4, gt=0.0)
    weight_decay: float = Field(default=0.05, ge=0.0)
    opt_eps: float = Field(default=1e-8, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0)
    sched: str = "cosine"
    min_lr: float = Field(default=1e-5, ge=0.0)
    warmup_epochs: int = Field(default=5, ge=0, le=MAX_EPOCHS)
    warmup_lr: float = Field(default=1e-6, ge=0.0)
    clip_grad: float | None = Field(default=None, gt=0.0)
    ema: bool = True
    ema_decay: float = Field(default=0.99996, gt=0.0, lt=1.0)
    # Mixed precision; only takes effect on CUDA.
    amp: bool = True
    # Cap on optimizer steps per epoch (smoke runs); None = the whole training set.
    steps_per_epoch: int | None = Field(default=None, gt=0, le=10**9)


class AugConfig(_Frozen):
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = Field(default=0.4, ge=0.0)
    reprob: float = Field(default=0.25, ge=0.0, le=1.0)
    interpolation: str = "bicubic"
    # Random-resized-crop area range and horizontal-flip probability (timm's `scale`, `hflip`);
    # small images of digits want a gentler crop and no flip.
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = Field(default=0.5, ge=0.0, le=1.0)
    crop_pct: float = Field(default=0.875, gt=0.0, le=1.0)
    mixup: float = Field(default=0.8, ge=0.0)
    cutmix: float = Field(default=1.0, ge=0.0)
    mixup_switch_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    label_smoothing: float = Field(default=0.1, ge=0.0, lt=1.0)


class TrainConfig(_Frozen):
    # A named preset (trainers/recipes.py) whose values apply under the explicit ones; "auto"
    # takes the one that fits data.name. Validation resolves it: a TrainConfig holds the recipe's
    # name and every concrete value it set.
    recipe: str = AUTO
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: OptimConfig = Field(default_factory=OptimConfig)
    aug: AugConfig = Field(default_factory=AugConfig)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch intra-op threads; None leaves torch's default.
    threads: int | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _recipe_under_explicit_values(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        return apply_recipe(data, default_data=DataConfig.model_fields["name"].default)

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, name: str) -> str:
        check_recipe_name(name)
        return name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def effective_lr(self) -> float:
        t = self.train
        return t.lr if t.lr is not None else t.base_lr * t.batch_size / 512


def field_names(model_cls: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    """The valid keys at `path` inside `model_cls` (for did-you-mean hints).

    Looks through Optional / Union / container annotations (one level of nesting each) for the
    pydantic model that holds the next key.
    """
    cls: Any = model_cls
    for part in path:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        candidates = [field.annotation, *getattr(field.annotation, "__args__", ())]
        candidates += [a for c in list(candidates) for a in getattr(c, "__args__", ())]
        cls = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)),
                   None)
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}))


# pydantic's loc entries that name a union branch rather than a key: builtin type tags
# ('int', 'str', 'none'), parametrised tags ("literal['default']", 'list[int]') and model classes
# ('LocalityConfig', 'AshaSpec'); every key of our schemas is lower-case.
_TYPE_TAGS = {"str", "int", "float", "bool", "none", "list", "dict"}


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (
        part in _TYPE_TAGS or "[" in part or (part[:1].isupper() and part.isidentifier())
    )


def format_validation_error(
    err: ValidationError, model_cls: type[BaseModel] | None = None, prefix: str = ""
) -> list[str]:
    """One line per problem: `<prefix>key.path[i]: what is wrong; how to fix`."""
    model_cls = model_cls or TrainConfig
    lines = []
    for e in err.errors():
        # A mapping given where a union also allows a literal or null: the mapping branch's own
        # errors say what is wrong, the "should be 'default'" line would only confuse.
        if e["type"] in ("literal_error", "none_required") and isinstance(e.get("input"), Mapping):
            continue
        loc = [p for p in e["loc"] if not _is_union_tag(p)]
        path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
        where = f"{prefix}{path or '(top level)'}"
        if e["type"] == "extra_forbidden":
            valid = field_names(model_cls, loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            fix = f"did you mean '{hint[0]}'?" if hint else "remove it"
            lines.append(f"{where}: unknown key; {fix} (valid keys: {', '.join(valid)})")
        elif e["type"] == "value_error":  # our own validators already say what they got
            lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{where}: {e['msg']} but got {e.get('input')!r}")
    # A union reports one line per branch; keep each message once.
    return list(dict.fromkeys(lines))


def train_config_from_dict(data: Mapping[str, Any] | None, *, source: str = "config"
                           ) -> TrainConfig:
    """Validate a nested mapping into a TrainConfig, raising ConfigError naming every bad key."""
    try:
        return TrainConfig.model_validate(dict(data or {}))
    except ValidationError as err:
        problems = format_validation_error(err, TrainConfig)
        raise ConfigError(f"{source}: " + "\n  ".join(problems)) from None


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (`train.lr`, `model.locality.act`) in a nested mapping, returning a copy.

    A mapping value is merged into what is already there (so `model.locality: {act: relu6}` keeps
    the other locality knobs); any other value, `None` included, replaces it.
    """
    out: dict[str, Any] = copy.deepcopy(dict(data))
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), Mapping):
            node[leaf] = deep_merge(node[leaf], value)
        else:
            node[leaf] = copy.deepcopy(value)
    return out


def parse_set_args(items: Sequence[str]) -> dict[str, Any]:
    """Parse `key.path=value` strings; values are YAML scalars/lists (`1e-3`, `false`, `[1, 2]`)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise ConfigError(
                f"--set {item!r}: expected key.path=value (for example --set train.lr=1e-3)"
            )
        try:
            # The strict loader reads `1e-3` as the float a researcher means (trainers/_yaml.py).
            value = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
        out[key] = value
    return out


def _field_default(path: tuple[str, ...]) -> Any:
    """The TrainConfig default at `path`, as JSON data (tuples as lists, as in a config dict)."""
    cls: Any = TrainConfig
    for part in path[:-1]:
        cls = cls.model_fields[part].annotation
    default = cls.model_fields[path[-1]].get_default(call_default_factory=True)
    return json.loads(json.dumps(default))


def _recipe_values(name: str) -> dict[tuple[str, ...], Any]:
    """Every key any recipe sets -> recipe `name`'s value (the TrainConfig default if unlisted)."""
    def keys(values: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
        return {tuple(k.split(".")): v for k, v in flatten(values).items()}

    every = {k for r in RECIPES.values() for k in keys(r.values)}
    mine = keys(RECIPES[name].values)
    return {k: mine[k] if k in mine else _field_default(k) for k in every}


def switch_recipe(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A resolved TrainConfig dict moved onto recipe `name`: each value equal to its old
    recipe's takes the new recipe's; values the config chose itself stay. Idempotent."""
    get_recipe(name)
    out = copy.deepcopy(dict(config))
    old = config.get("recipe")
    if old == name:
        return out
    before = _recipe_values(old) if old in RECIPES else {}
    for key, value in _recipe_values(name).items():
        node = out
        for part in key[:-1]:
            node = node.setdefault(part, {})
        current = node.get(key[-1])
        if key in before and json.loads(json.dumps(current)) == before[key]:
            node[key[-1]] = copy.deepcopy(value)
    out["recipe"] = name
    return out
