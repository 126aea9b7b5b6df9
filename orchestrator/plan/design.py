"""Expand a spec into arms and trials with stable keys, validating every trial config once.

Arms whose resolved configs are identical run once: the first name (in the order of
`orchestrator.plan.naming`) wins and the others are kept as aliases (an ofat axis value equal to
base is the base arm). Trials are ordered seed-major (every arm of seed 0, then seed 1, ...) so a
partial sweep holds complete paired comparisons.

Every design point's config is resolved and validated once, here (the schema, then the trainer's
checks: model, layer ranges, optimizer, data), and shipped to the worker as it is, which trains it
without checking it again. `--smoke` is applied here too, to every config and to every search
sample (through the plan's sampler), so nothing downstream knows about it.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.errors import PlanError
from orchestrator.plan.checks import (
    check_metric,
    domain_probe_values,
    resolve_config,
    run_check,
    trainer_validate,
)
from orchestrator.plan.keys import seed_keys, trial_key
from orchestrator.plan.model import Arm, Plan, PlannedTrial
from orchestrator.plan.naming import design_points
from orchestrator.spec import smoke as smoke_mod
from orchestrator.spec.model import SweepSpec
from orchestrator.spec.questions import QuestionError, resolve_questions
from trainers.config import TrainConfig, apply_overrides

__all__ = ["build_plan"]


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
    validate = validate or trainer_validate
    base = dict(spec.base)
    checked: dict[str, TrainConfig] = {}
    warnings: dict[str, None] = {}

    def resolve_checked(overrides: Mapping[str, Any], where: str) -> TrainConfig:
        # Equal data, equal config: each distinct one is validated once.
        data = apply_overrides(base, overrides)
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in checked:
            # base itself was validated with the spec; any other point is validated here.
            cfg = (spec.base_config if not overrides
                   else resolve_config(data, f"{source}: {where}"))
            need_data = data_required and not smoke
            problem = run_check(validate, cfg, f"{source}: {where}", data_required=need_data)
            if problem:
                warnings[problem] = None
            if smoke:
                small = resolve_config(smoke_mod.shrink_config(cfg.to_dict()),
                                       f"{source}: {where} (--smoke)")
                run_check(validate, small, f"{source}: {where} (--smoke)", data_required=True)
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
    search_base = resolve({"seed": spec.seed_list[0]}, "base")
    for key, dom in spec.search.space.items():
        for i, value in enumerate(domain_probe_values(dom)):
            resolve({key: value, "seed": spec.seed_list[0]}, f"search.space.{key}.{dom.kind}[{i}]")
    check_metric(spec, [search_base], source)
    return Plan(spec=spec, source=source, arms=(Arm("hpo", {}),), trials=(),
                search_base=search_base, smoke=smoke, warnings=tuple(warnings))


def _design_plan(spec: SweepSpec, source: str, smoke: bool, resolve: _Resolve,
                 warnings: Mapping[str, None]) -> Plan:
    """A designed study: its arms (design points resolving to one config run once, the later
    names kept as aliases), each arm's reference, and arms x seeds trials with stable keys."""
    arms: list[Arm] = []
    arm_cfgs: dict[str, TrainConfig] = {}        # arm name -> config (with base's seed)
    by_key: dict[str, int] = {}
    for name, overrides, where, factors, others in design_points(spec, source):
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
    seeds = spec.seed_list
    keys = {arm.name: seed_keys(arm_cfgs[arm.name], seeds) for arm in arms}
    trials = []
    for i, seed in enumerate(seeds):
        for arm in arms:
            cfg = arm_cfgs[arm.name].model_copy(update={"seed": seed})
            trials.append(PlannedTrial(keys[arm.name][i], arm.name, seed, cfg, arm.aliases))
    check_metric(spec, list(arm_cfgs.values()), source)
    return Plan(spec=spec, source=source, arms=tuple(arms), trials=tuple(trials), smoke=smoke,
                warnings=tuple(warnings), references=references, questions=questions)


def _questions(spec: SweepSpec, arms: list[Arm], references: Mapping[str, str],
               source: str) -> tuple[tuple[str, str], ...]:
    """The spec's `compare` resolved against the arms; PlanError naming the key if it cannot."""
    try:
        return resolve_questions(spec.compare, {a.name: a.aliases for a in arms}, references)
    except QuestionError as exc:
        raise PlanError(f"{source}: {exc}") from None
