"""The plan's types: arms, trials and the resolved plan a sweep runs, frozen.

An arm is a named point of the design; a trial is an arm x seed, with its config resolved and
validated once at planning (`orchestrator.plan.design`). A hyper-parameter search has no arms: its
trials are sampled at run time and the plan's `sampler` gives each sample its config, on the driver.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.spec.model import SweepSpec
from orchestrator.spec.smoke import shrink_config
from trainers.config import TrainConfig, apply_overrides

__all__ = ["Arm", "Plan", "PlannedTrial", "SampleResolver", "resolve_sample"]


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
    # The study's questions (spec `compare`, orchestrator/spec/questions.py): (arm, its reference)
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
    def seeds_by_arm(self) -> dict[str, list[int]]:
        """Each arm's planned seeds, in order (the same for every arm unless a seed rule added
        seeds to some arms only)."""
        out: dict[str, list[int]] = {a.name: [] for a in self.arms}
        for t in self.trials:
            out.setdefault(t.arm, []).append(t.seed)
        return out

    def restricted(self, members: Collection[tuple[str, int]]) -> Plan:
        """The plan with only the trials whose (arm, seed) is in `members` (the trials a seed
        rule has started so far), in the plan's order; arms, references and questions stay."""
        wanted = set(members)
        return replace(self, trials=tuple(t for t in self.trials if (t.arm, t.seed) in wanted))

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


def resolve_sample(search_base: TrainConfig, sample: Mapping[str, Any]) -> TrainConfig:
    """A search sample (dotted key -> value) applied to the search base, validated."""
    return TrainConfig.model_validate(apply_overrides(search_base.to_dict(), sample))
