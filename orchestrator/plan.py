"""Expand a spec into arms and trials with stable keys, validating every trial before launch.

An arm is a named point of the design; a trial is an arm x seed. How the design becomes arms:

- `baseline`: base + the `baseline` overrides, named "baseline" (the reference arm).
- `ofat` (one factor at a time): the `base` arm itself (named by `base_arm`, default "base": the
  centre point) plus one arm per axis value applied to base alone, named `<short key>=<value>`
  (`act=relu6`, `layers=1-4`), or by the mapping's items when the value is a mapping
  (`expansion=2,reduction=96`). A `model.backbone` axis names its arms after the backbones
  (`localvit_pvt_tiny`, with `backbone=localvit_pvt_tiny` kept as an alias), unless an arm of
  `arms` has that name. Every ofat arm differs from base in exactly one factor; the baseline is
  the reference the report compares every arm against.
- `factorial`: one arm per combination of all axes' values applied to base
  (`act=relu6,layers=1-4`, `localvit_tiny,act=relu6`); base itself is not an arm unless a
  combination equals it.
- `arms`: explicit named arms (base + their overrides) for one-off controls.

Arms whose resolved configs are identical run once: the first name (in the order above) wins and
the others are kept as aliases (an ofat axis value equal to base is the base arm). Trials are
ordered seed-major (every arm of seed 0, then seed 1, ...) so a partial sweep holds complete
paired comparisons. A hyper-parameter search (`search.space`) has no arms: its trials are sampled
at run time, and the plan's `sampler` (a SampleResolver) gives each sample its config.

The plan is typed: every trial's config is a `TrainConfig`, validated once, here (the schema, then
the trainer's checks: model, layer ranges, optimizer, data), and shipped to the worker as it is,
which trains it without checking it again. `--smoke` is applied here too, to every config and to
every search sample (through the sampler), so nothing downstream knows about it.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from orchestrator.errors import PlanError
from orchestrator.spec import SweepSpec
from trainers.config import ConfigError, TrainConfig, apply_overrides, format_validation_error

__all__ = ["Arm", "Plan", "PlannedTrial", "SampleResolver", "build_plan", "format_overrides",
           "keep_recorded_names", "reported_metrics", "resolve_sample", "trial_key"]

# Execution-only settings: they do not change what a trial computes, so they stay out of its key
# (the same study on a laptop and on a cluster has the same trial keys).
_EXECUTION_KEYS = (("threads",), ("data", "num_workers"))


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: Mapping[str, Any]        # dotted overrides of base that make this arm
    aliases: tuple[str, ...] = ()       # other design points that resolved to the same config
    # The axis values that make this arm (axis key -> value): one item for an ofat arm, one per
    # axis for a factorial one, none for the baseline, the base arm and named arms.
    factors: Mapping[str, Any] = field(default_factory=dict)
    # Aliases that only spell a backbone-named point as `backbone=X` (matched, not shown).
    spellings: tuple[str, ...] = ()

    @property
    def shown_aliases(self) -> tuple[str, ...]:
        return tuple(a for a in self.aliases if a not in self.spellings)


@dataclass(frozen=True)
class PlannedTrial:
    key: str
    arm: str
    seed: int
    config: TrainConfig                 # resolved and validated once, at planning
    aliases: tuple[str, ...] = ()

    @property
    def backbone(self) -> str:
        return self.config.model.backbone


@dataclass(frozen=True)
class SampleResolver:
    """A search sample (dotted key -> value) -> its trial's TrainConfig: the sample applied to the
    search base, validated once, and shrunk when the sweep runs with --smoke. Picklable: the worker
    and the driver's callback each hold one and agree on every config."""

    search_base: TrainConfig
    smoke: bool = False

    def __call__(self, sample: Mapping[str, Any]) -> TrainConfig:
        cfg = resolve_sample(self.search_base, sample)
        if self.smoke:
            from orchestrator.smoke import shrink_config

            cfg = TrainConfig.model_validate(shrink_config(cfg.to_dict()))
        return cfg


@dataclass(frozen=True)
class Plan:
    spec: SweepSpec
    source: str
    arms: tuple[Arm, ...]
    trials: tuple[PlannedTrial, ...]    # empty for a search: trials are sampled at run time
    search_base: TrainConfig | None = None   # base config (with seed) a search samples into
    smoke: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)
    # Every arm but the baseline -> the arm it is measured against (spec `references`, else the
    # baseline); aliases resolved to arm names.
    references: Mapping[str, str] = field(default_factory=dict)
    # The study's questions (spec `compare`, orchestrator/questions.py): (arm, its reference)
    # pairs, the multiple-testing family; every compared arm when the spec does not say.
    questions: tuple[tuple[str, str], ...] = ()

    @property
    def protected(self) -> tuple[str, ...]:
        """Arms that early stopping never stops: the baseline, the base arm and every reference."""
        names = {a.name for a in self.arms}
        keep = {"baseline", self.arm_name(self.spec.base_arm), *self.references.values()}
        return tuple(a.name for a in self.arms if a.name in keep and a.name in names)

    def arm_name(self, name: str) -> str:
        """The arm a design point ran as (an alias resolves to the arm that kept its config)."""
        for arm in self.arms:
            if name == arm.name or name in arm.aliases:
                return arm.name
        return name

    @property
    def is_search(self) -> bool:
        return bool(self.spec.search.space)

    @property
    def num_trials(self) -> int:
        if not self.is_search:
            return len(self.trials)
        grid = 1
        for dom in self.spec.search.space.values():
            if dom.kind == "grid":
                grid *= len(dom.values)
        return self.spec.search.num_samples * grid

    @property
    def sampler(self) -> SampleResolver | None:
        """What turns a search sample into its trial's config (None for a designed study)."""
        if self.search_base is None:
            return None
        return SampleResolver(self.search_base, self.smoke)

    @property
    def configs(self) -> dict[str, TrainConfig]:
        """Trial key -> its validated config, as the workers receive them."""
        return {t.key: t.config for t in self.trials}

    @property
    def max_epochs(self) -> int:
        configs = [t.config for t in self.trials]
        if not configs and self.search_base is not None:
            configs = [self.search_base]
        return max(c.train.epochs for c in configs)


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


def _seed_keys(config: TrainConfig, seeds: Iterable[int]) -> list[str]:
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


# ------------------------------------------------------------------------------------ arm names

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


def _flat_items(mapping: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in mapping.items():
        if isinstance(v, Mapping) and v:
            yield from _flat_items(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


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
            out += [f"{key}.{k}={_render(v)}" for k, v in _flat_items(value)]
        else:
            out.append(f"{key}={_render(value)}")
    return out


def _label(short: str, value: Any) -> str:
    if isinstance(value, Mapping) and value:
        return ",".join(f"{k}={_render(v)}" for k, v in _flat_items(value))
    return f"{short}={_render(value)}"


_BACKBONE = "model.backbone"


def _labels(key: str, short: str, value: Any, taken: set[str]) -> tuple[str, str]:
    """(name part, its `key=value` spelling) of one axis value: a backbone axis's value is its
    own name unless `taken` (the spec's own arm names) has it."""
    label = _label(short, value)
    if key == _BACKBONE and isinstance(value, str) and value not in taken:
        return value, label
    return label, label


# ----------------------------------------------------------------------------------- resolution

def _resolve(data: Mapping[str, Any], where: str) -> TrainConfig:
    """A trial's config data -> TrainConfig (the schema checked); PlanError naming `where` if
    invalid."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        lines = format_validation_error(err, TrainConfig)
        raise PlanError(f"{where}: " + "; ".join(lines)) from None


_Point = tuple[str, dict[str, Any], str, dict[str, Any], tuple[str, ...]]


def _design_points(spec: SweepSpec, source: str) -> list[_Point]:
    """(arm name, overrides, spec key path for error messages, axis factors, other names of the
    point) in naming-priority order."""
    points: list[_Point] = [("baseline", dict(spec.baseline), "baseline", {}, ())]
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


def _references(spec: SweepSpec, arms: list[Arm], source: str) -> dict[str, str]:
    """Every arm but the baseline -> its reference arm, with spec names and aliases resolved."""
    canonical = {a.name: a.name for a in arms}
    canonical.update({alias: a.name for a in arms for alias in a.aliases})

    def resolve(name: str, where: str) -> str:
        if name in canonical:
            return canonical[name]
        near = difflib.get_close_matches(name, list(canonical), n=1, cutoff=0.5)
        hint = f"did you mean '{near[0]}'?" if near else f"the arms are: {', '.join(canonical)}"
        raise PlanError(f"{source}: {where}: no arm named '{name}'; {hint}")

    out = {a.name: "baseline" for a in arms if a.name != "baseline"}
    for arm, ref in spec.references.items():
        name, target = resolve(arm, f"references.{arm}"), resolve(ref, f"references.{arm}")
        if name == target:
            raise PlanError(f"{source}: references.{arm}: '{ref}' is the same arm (same config) "
                            f"as '{arm}'; measure it against another arm or remove the entry")
        if name == "baseline":
            raise PlanError(f"{source}: references.{arm}: the baseline is the reference of the "
                            f"study and is not measured against another arm; remove the entry")
        out[name] = target
    return out


def build_plan(
    spec: SweepSpec,
    *,
    source: str,
    smoke: bool = False,
    data_required: bool = True,
    validate: Callable[[TrainConfig], None] | None = None,
) -> Plan:
    """Arms x seeds with keys; every resolved config is validated (schema, then `validate`).

    `validate` defaults to the trainer's own check (model exists, layer range fits, data
    readable); it raises trainers.config.ConfigError, reported with the spec key that made the
    config. With `smoke`, every config is checked as written and then shrunk to CPU minutes.
    Without `data_required` (a dry run, a cluster whose workers hold the data, --smoke) a dataset
    this machine cannot read becomes a plan warning and everything else is still checked.
    """
    from orchestrator import smoke as smoke_mod

    validate = validate or _trainer_validate
    base = dict(spec.base)
    checked: dict[str, TrainConfig] = {}
    warnings: dict[str, None] = {}

    def resolve_checked(overrides: Mapping[str, Any], where: str) -> TrainConfig:
        # Equal data, equal config: each distinct one is validated once.
        data = apply_overrides(base, overrides)
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in checked:
            cfg = _resolve(data, f"{source}: {where}")
            need_data = data_required and not smoke
            problem = _run_check(validate, cfg, f"{source}: {where}", data_required=need_data)
            if problem:
                warnings[problem] = None
            if smoke:
                small = _resolve(smoke_mod.shrink_config(cfg.to_dict()),
                                 f"{source}: {where} (--smoke)")
                _run_check(validate, small, f"{source}: {where} (--smoke)", data_required=True)
                cfg = small
            checked[key] = cfg
        return checked[key]

    if spec.search.space:
        return _search_plan(spec, source, smoke, resolve_checked, warnings)
    return _design_plan(spec, source, smoke, resolve_checked, warnings)


_Resolve = Callable[[Mapping[str, Any], str], TrainConfig]


def _search_plan(spec: SweepSpec, source: str, smoke: bool, resolve: _Resolve,
                 warnings: Mapping[str, None]) -> Plan:
    """A hyper-parameter search: no arms; the base config and a probe of each searched domain
    (its bounds and choices) are checked now, the samples are drawn at run time."""
    search_base = resolve({"seed": spec.seeds[0]}, "base")
    for key, dom in spec.search.space.items():
        for i, value in enumerate(_domain_probe_values(dom)):
            resolve({key: value, "seed": spec.seeds[0]}, f"search.space.{key}.{dom.kind}[{i}]")
    _check_metric(spec, [search_base], source)
    return Plan(spec=spec, source=source, arms=(Arm("hpo", {}),), trials=(),
                search_base=search_base, smoke=smoke, warnings=tuple(warnings))


def _design_plan(spec: SweepSpec, source: str, smoke: bool, resolve: _Resolve,
                 warnings: Mapping[str, None]) -> Plan:
    """A designed study: its arms (design points resolving to one config run once, the later
    names kept as aliases), each arm's reference, and arms x seeds trials with stable keys."""
    arms: list[Arm] = []
    arm_cfgs: dict[str, TrainConfig] = {}        # arm name -> config (with base's seed)
    by_key: dict[str, int] = {}
    for name, overrides, where, factors, others in _design_points(spec, source):
        cfg = resolve(overrides, where)
        key = trial_key(cfg)
        if key in by_key:
            first = arms[by_key[key]]
            arms[by_key[key]] = Arm(first.name, first.overrides,
                                    first.aliases + (name, *others), first.factors,
                                    first.spellings + others)
            continue
        by_key[key] = len(arms)
        arms.append(Arm(name, overrides, aliases=others, factors=factors, spellings=others))
        arm_cfgs[name] = cfg
    references = _references(spec, arms, source)
    questions = _questions(spec, arms, references, source)
    keys = {arm.name: _seed_keys(arm_cfgs[arm.name], spec.seeds) for arm in arms}
    trials = []
    for i, seed in enumerate(spec.seeds):
        for arm in arms:
            cfg = arm_cfgs[arm.name].model_copy(update={"seed": seed})
            trials.append(PlannedTrial(keys[arm.name][i], arm.name, seed, cfg, arm.aliases))
    _check_metric(spec, list(arm_cfgs.values()), source)
    return Plan(spec=spec, source=source, arms=tuple(arms), trials=tuple(trials), smoke=smoke,
                warnings=tuple(warnings), references=references, questions=questions)


def _questions(spec: SweepSpec, arms: list[Arm], references: Mapping[str, str],
               source: str) -> tuple[tuple[str, str], ...]:
    """The spec's `compare` resolved against the arms; PlanError naming the key if it cannot."""
    from orchestrator.questions import QuestionError, resolve_questions

    try:
        return resolve_questions(spec.compare, {a.name: a.aliases for a in arms}, references)
    except QuestionError as exc:
        raise PlanError(f"{source}: {exc}") from None


def keep_recorded_names(plan: Plan, recorded: Mapping[str, str]) -> Plan:
    """The plan with each arm under the name an earlier driver of the same sweep ran it as
    (`recorded`: trial key -> arm name, from the sweep's spec.yaml), its new name kept as an
    alias. A sweep started before its arms' naming changed (a backbone axis named `backbone=X`)
    resumes under its own names: Tune's saved trials, the arm scheduler and the rows already
    written all carry them."""
    renames: dict[str, str] = {}
    names = {a.name for a in plan.arms}
    recorded_as: dict[str, set[str]] = {}         # arm -> the names its trials were recorded as
    for t in plan.trials:
        if t.key in recorded:
            recorded_as.setdefault(t.arm, set()).add(recorded[t.key])
    for arm, old in recorded_as.items():
        if len(old) == 1 and (name := old.pop()) != arm and name not in names:
            renames[arm] = name
    if not renames:
        return plan

    def renamed(arm: Arm) -> Arm:
        name = renames.get(arm.name, arm.name)
        aliases = tuple(dict.fromkeys(a for a in (arm.name, *arm.aliases) if a != name))
        return replace(arm, name=name, aliases=aliases)

    arms = tuple(renamed(a) for a in plan.arms)
    aliases = {a.name: a.aliases for a in arms}
    trials = tuple(replace(t, arm=renames.get(t.arm, t.arm),
                           aliases=aliases[renames.get(t.arm, t.arm)]) for t in plan.trials)
    references = {renames.get(a, a): renames.get(r, r) for a, r in plan.references.items()}
    questions = tuple((renames.get(a, a), renames.get(r, r)) for a, r in plan.questions)
    return replace(plan, arms=arms, trials=trials, references=references, questions=questions)


def _domain_probe_values(dom) -> list[Any]:
    """The values of a search domain worth validating: every choice, both bounds of a range."""
    return list(dom.values)


def _run_check(validate: Callable[[TrainConfig], None], tc: TrainConfig, where: str, *,
               data_required: bool) -> str | None:
    """Raise PlanError if `tc` is not a valid trial; return the data problem if it was waived
    (one message for every config that shares the dataset)."""
    from trainers.data import check_data

    waived = None
    if not data_required:
        try:
            check_data(tc.data)
        except ConfigError as exc:
            waived = f"{exc} (the data is not checked on this machine)"
            tc = tc.model_copy(update={"data": _stand_in_data(tc)})
    try:
        validate(tc)
    except ConfigError as exc:
        raise PlanError(f"{where}: {_with_key_path(str(exc))}") from None
    return waived


def _stand_in_data(cfg: TrainConfig):
    """A dataset every check accepts at the same image size, for data this machine lacks: the
    rest of the config (model, image size, optimizer, batch size, augmentation) is still checked."""
    from trainers.registry import default_img_size

    img = cfg.data.img_size or default_img_size(cfg.model.backbone)
    return cfg.data.model_copy(update={"name": "synthetic", "root": None, "img_size": img,
                                       "synthetic_train": 10**9})


def _with_key_path(message: str) -> str:
    """Model errors name knobs relative to `model` ('locality.act ...'); give the full key path."""
    if message.startswith("unknown model"):
        return f"model.backbone: {message}"
    if message.startswith(("locality", "arch")):
        return f"model.{message}"
    return message


def _trainer_validate(cfg: TrainConfig) -> None:
    from trainers.train import validate_config

    validate_config(cfg)


def reported_metrics(cfg: TrainConfig) -> set[str]:
    """The metric names a trial of `cfg` reports each epoch (trainers.train._epoch_metrics)."""
    names = {"train/loss", "val/loss", "val/top1", "val/top5", "lr", "train/images_per_s",
             "params", "macs", "epoch_time_s", "train/cuda", "train/amp"}
    if cfg.train.ema:
        names |= {"val_ema/loss", "val_ema/top1", "val_ema/top5"}
    return names


def _check_metric(spec: SweepSpec, configs: list[TrainConfig], source: str) -> None:
    """The metric is reported by every trial, and ASHA's first rung comes before the last epoch."""
    asha = spec.search.asha
    max_epochs = max(c.train.epochs for c in configs)
    if asha is not None and asha.grace_period > max_epochs:
        raise PlanError(
            f"{source}: search.scheduler.asha.grace_period: {asha.grace_period} is more than the "
            f"{max_epochs} epochs any trial runs, so ASHA could never stop a trial; lower it "
            f"(for example to {max(1, max_epochs // 5)})"
        )
    metric = spec.search.metric
    for cfg in configs:
        names = reported_metrics(cfg)
        if metric not in names:
            raise PlanError(
                f"{source}: search.metric: no trial of {cfg.model.backbone} "
                f"{'with train.ema=false ' if not cfg.train.ema else ''}reports {metric!r}; "
                f"pick one of {', '.join(sorted(names))}"
            )


def resolve_sample(search_base: TrainConfig, sample: Mapping[str, Any]) -> TrainConfig:
    """A search sample (dotted key -> value) applied to the search base, validated."""
    return TrainConfig.model_validate(apply_overrides(search_base.to_dict(), sample))
