"""The plan as the sweep records it: what the runner writes into spec.yaml (and the MLflow parent
run), and what the report, `sync` and `--resume` read back.

`resolved_spec(plan)` is the whole record: the spec as validated, `--smoke`, the spec file's name
and the `PlanRecord` (arms with their overrides, aliases, factors and reference; the protected
arms; the ASHA unit; every trial's key, arm and seed). `PlanRecord.from_dict` reads the `plan`
section back, checked, into the same types, so writer and readers cannot disagree on a field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.plan.model import Plan

__all__ = ["ArmRecord", "PlanRecord", "TrialRecord", "resolved_spec"]


@dataclass(frozen=True)
class ArmRecord:
    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    factors: Mapping[str, Any] = field(default_factory=dict)   # axis key -> value
    reference: str | None = None              # the arm it is measured against; None: baseline

    def to_dict(self) -> dict[str, Any]:
        return {"overrides": dict(self.overrides), "aliases": list(self.aliases),
                "factors": dict(self.factors), "reference": self.reference}


@dataclass(frozen=True)
class TrialRecord:
    key: str
    arm: str
    seed: int


@dataclass(frozen=True)
class PlanRecord:
    arms: tuple[ArmRecord, ...]
    protected: tuple[str, ...] = ()           # arms early stopping never stops
    asha_unit: str | None = None              # arm | trial | None (no ASHA)
    trials: tuple[TrialRecord, ...] = ()      # empty for a search (sampled at run time)

    @classmethod
    def from_plan(cls, plan: Plan) -> PlanRecord:
        return cls(
            arms=tuple(ArmRecord(a.name, dict(a.overrides), tuple(a.aliases), dict(a.factors),
                                 plan.references.get(a.name)) for a in plan.arms),
            protected=tuple(plan.protected), asha_unit=plan.spec.asha_unit,
            trials=tuple(TrialRecord(t.key, t.arm, t.seed) for t in plan.trials))

    def to_dict(self) -> dict[str, Any]:
        return {"arms": {a.name: a.to_dict() for a in self.arms},
                "protected": list(self.protected), "asha_unit": self.asha_unit,
                "trials": [{"key": t.key, "arm": t.arm, "seed": t.seed} for t in self.trials]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanRecord:
        """The record `to_dict` wrote; KeyError, TypeError or ValueError if it is not one."""
        arms = []
        for name, arm in dict(data["arms"]).items():
            arms.append(ArmRecord(str(name), dict(arm["overrides"]),
                                  tuple(str(a) for a in arm["aliases"]), dict(arm["factors"]),
                                  None if arm["reference"] is None else str(arm["reference"])))
        return cls(arms=tuple(arms),
                   protected=tuple(str(a) for a in data.get("protected") or ()),
                   asha_unit=data.get("asha_unit"),
                   trials=tuple(TrialRecord(str(t["key"]), str(t["arm"]), int(t["seed"]))
                                for t in data.get("trials") or ()))

    def arm(self, name: str) -> ArmRecord | None:
        return next((a for a in self.arms if a.name == name), None)


def resolved_spec(plan: Plan) -> dict[str, Any]:
    """What spec.yaml and the MLflow parent run record: the spec, --smoke, its file and the plan."""
    out = plan.spec.to_dict()
    out["smoke"] = plan.smoke
    out["source"] = plan.source
    out["plan"] = PlanRecord.from_plan(plan).to_dict()
    return out
