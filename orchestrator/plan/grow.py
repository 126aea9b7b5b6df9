"""How an edited spec's plan relates to the plan a sweep saved: which trials it keeps, adds or
changes, and which spec keys differ.

A trial's key is a digest of its resolved config and seed (`orchestrator.plan.keys`), so a trial
whose config and seed are unchanged has the same key in both plans: it is kept. A trial the saved
plan does not have (a new seed, arm or axis value) is added. A trial of the same arm and seed with
another key is changed (its recipe, epochs or data moved under it); a saved trial the new plan no
longer has is removed. `--resume` runs the added trials and refuses the other two
(`orchestrator.tune.grow`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.plan.record import PlanRecord, TrialRecord

__all__ = ["PlanDiff", "diff_plans", "spec_changes"]


@dataclass(frozen=True)
class PlanDiff:
    kept: tuple[TrialRecord, ...]                            # same key in both plans
    added: tuple[TrialRecord, ...]                           # only in the new plan
    changed: tuple[tuple[TrialRecord, TrialRecord], ...]     # (saved, new): same arm and seed
    removed: tuple[TrialRecord, ...]                         # only in the saved plan

    @property
    def same(self) -> bool:
        """The new plan has exactly the saved trials."""
        return not (self.added or self.changed or self.removed)


def diff_plans(saved: PlanRecord, new: PlanRecord) -> PlanDiff:
    """Match the new plan's trials to the saved ones: by key first (same config and seed, even if
    the arm was renamed), then by (arm, seed) for those left (changed); in the new plan's order."""
    saved_keys = {t.key for t in saved.trials}
    new_keys = {t.key for t in new.trials}
    kept = tuple(t for t in new.trials if t.key in saved_keys)
    old_left = {(t.arm, t.seed): t for t in saved.trials if t.key not in new_keys}
    added: list[TrialRecord] = []
    changed: list[tuple[TrialRecord, TrialRecord]] = []
    for trial in new.trials:
        if trial.key in saved_keys:
            continue
        old = old_left.pop((trial.arm, trial.seed), None)
        if old is None:
            added.append(trial)
        else:
            changed.append((old, trial))
    return PlanDiff(kept=kept, added=tuple(added), changed=tuple(changed),
                    removed=tuple(old_left.values()))


def spec_changes(saved: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two spec dicts (mappings compared key by key,
    anything else as a whole value), sorted."""
    out: list[str] = []
    for key in sorted(set(saved) | set(new), key=str):
        a, b = saved.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += spec_changes(a, b, prefix=f"{name}.")
        elif a != b:
            out.append(name)
    return out
