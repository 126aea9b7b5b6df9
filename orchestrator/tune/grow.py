"""`--resume` with an edited spec: a study that grows (more seeds, arms or axis values) runs only
its new trials; a change that alters finished trials is refused unless `--rerun-changed` says to
run them again.

`check_growth` decides before anything is written (`check_storage` calls it): the same sweep (None),
a grown one (`Growth`), or a ResumeError naming the differing spec keys and the ways out.
`start_grown` then, under the driver lock, sets Tune's finished experiment aside (Tune cannot add
trials to a saved experiment), writes the grown plan record into spec.yaml and returns the trials
Parquet has as finished, which the fresh experiment skips. Every step can be repeated: a driver
killed in between finds the same answer on the next `--resume`, and one killed after spec.yaml
was written resumes the grown experiment as any sweep is resumed.

The rules (README, "Resuming"; docs/design.md, "Growing a study"):
- Kept: a trial whose key (a digest of its config and seed) is in both plans; its Parquet row and
  MLflow run stay as they are.
- Refused always: a spec key outside the study's design and recipe (run, search, name, smoke,
  the spec file), removed trials (fewer seeds or arms), a search, and growing a sweep whose own
  trials are unfinished while Tune's state to continue them exists (resume it first with the spec
  it was saved with, so they continue from their checkpoints).
- Changed trials (same arm and seed, other config) are refused unless `--rerun-changed`: then
  they run under their new keys and their old rows are superseded (the report reads only the
  trials of the plan record). Under arm-level early stopping only when every trial changed: the
  scheduler's log is then set aside as well, since its decisions were taken on the old trials.
- Arm-level early stopping: decisions already logged stand for old and new seeds alike (the
  scheduler replays its log), so the references and protected arms of kept arms may not move.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from orchestrator._files import filesystem
from orchestrator._provenance import parse_spec_yaml, provenance, write_spec_yaml
from orchestrator.errors import ResumeError
from orchestrator.layout import DECISIONS_FILE, RUNGS_FILE, SPEC_FILE, TRIALS_FILE
from orchestrator.plan.grow import PlanDiff, diff_plans, spec_changes
from orchestrator.plan.model import Plan
from orchestrator.plan.record import PlanRecord, resolved_spec
from orchestrator.sinks.parquet import read_trials, table_exists

__all__ = ["GROWABLE", "RECIPE", "Growth", "check_growth", "finished_keys", "keep_budget",
           "start_grown"]

# Spec keys a study may grow along: its design (seeds, axes, named arms, references) and words.
GROWABLE = frozenset({"seeds", "axes", "arms", "references", "description", "compare"})
# Spec keys that change what trials compute; a difference is fine while no finished trial changes.
RECIPE = frozenset({"base", "baseline", "base_arm"})
GROWN_SUFFIX = ".grown-"
SUPERSEDED_SUFFIX = ".superseded-"


@dataclass(frozen=True)
class Growth:
    """A resumed sweep whose plan grew: what it keeps, adds and reruns."""

    diff: PlanDiff
    keys: tuple[str, ...]           # the spec's dotted keys that differ from spec.yaml's
    rerun_changed: bool


def finished_keys(target: Path, statuses: Collection[str] = ("completed", "stopped")
                  ) -> frozenset[str]:
    """The trial keys trials.parquet (the system of record) has with one of `statuses`."""
    if not table_exists(target, TRIALS_FILE):
        return frozenset()
    rows = read_trials(target, decode_config=False, columns=["trial_key", "status"])
    return frozenset(rows.loc[rows["status"].isin(list(statuses)), "trial_key"])


def _not_same(plan: Plan, saved_path: Path, keys: list[str]) -> ResumeError:
    return ResumeError(
        f"{plan.source}: --resume: this is not the sweep saved in {saved_path.parent} "
        f"({', '.join(keys)} differ from its spec.yaml); resume with the same spec file, --set "
        f"options and --smoke as the run that started it, or grow it by its seeds, axes or arms "
        f"only")


def check_growth(plan: Plan, saved_path: Path, *, rerun_changed: bool = False,
                 tune_saved: bool = False) -> Growth | None:
    """None when the saved sweep is this one (or none was saved); a Growth when `plan` grows it;
    ResumeError otherwise. Reads only. `tune_saved`: whether Tune's experiment is saved."""
    if not saved_path.is_file():
        return None
    saved = parse_spec_yaml(saved_path.read_text()) or {}
    current = json.loads(json.dumps(resolved_spec(plan)))
    keys = spec_changes({k: v for k, v in saved.items() if k != "plan"},
                        {k: v for k, v in current.items() if k != "plan"})
    if all(_budget_key(k) for k in keys) and saved.get("plan") == current.get("plan"):
        return None         # the same sweep (with another budget: `keep_budget` records it)
    foreign = [k for k in keys if k.split(".")[0] not in GROWABLE | RECIPE
               and not _budget_key(k)]
    if foreign or plan.is_search:
        raise _not_same(plan, saved_path, foreign or keys)
    _check_rule_kept(plan, saved, saved_path)
    try:
        old = PlanRecord.from_dict(saved["plan"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _not_same(plan, saved_path, keys or ["plan"]) from None
    new = PlanRecord.from_plan(plan)
    diff = diff_plans(old, new)
    where = f"{plan.source}: --resume"
    named = (", ".join(k for k in keys if k.split(".")[0] not in ("seeds", "description"))
             or ", ".join(keys) or "no spec key but the trials' resolved configs (the trainer's "
                                    "defaults)")
    if diff.removed:
        raise ResumeError(
            f"{where}: the edited spec drops {len(diff.removed)} of the sweep's trials (e.g. "
            f"arm {diff.removed[0].arm} seed {diff.removed[0].seed}; {named} differ from "
            f"{saved_path}); a study can grow, not shrink: start a new sweep with --set "
            f"name=<new name>")
    if diff.changed and not rerun_changed:
        old_t, _ = diff.changed[0]
        raise ResumeError(
            f"{where}: the edited spec changes {len(diff.changed)} of the sweep's trials (e.g. "
            f"arm {old_t.arm} seed {old_t.seed}): {named} differ from {saved_path}, so their "
            f"results would no longer match their config. Either start a new sweep with --set "
            f"name=<new name>, or rerun the changed trials with --resume --rerun-changed (their "
            f"old rows are superseded)")
    if diff.changed and diff.kept and plan.spec.asha_unit == "arm":
        raise ResumeError(
            f"{where}: --rerun-changed: {len(diff.changed)} trials change ({named}) and "
            f"{len(diff.kept)} stay, but the arm-level early stopping decisions were taken on "
            f"the old trials together; start a new sweep with --set name=<new name>")
    _check_decisions_stand(plan, old, new, where)
    ended = finished_keys(saved_path.parent, ("completed", "stopped", "failed"))
    unfinished = [t for t in old.trials if t.key not in ended]
    if unfinished and tune_saved:
        raise ResumeError(
            f"{where}: the sweep saved in {saved_path.parent} has {len(unfinished)} unfinished "
            f"trials; resume it first with the spec and --set options it was saved with, so "
            f"that they continue from their checkpoints, then grow it")
    return Growth(diff=diff, keys=tuple(keys), rerun_changed=rerun_changed)


def _budget_key(key: str) -> bool:
    """run.budget only caps how many seeds a rule may still add: raising or lowering it moves no
    look of the rule (its schedule is fixed by `seeds`), so it may change on --resume."""
    return key == "run.budget" or key.startswith("run.budget.")


def keep_budget(plan: Plan, target: Path) -> None:
    """A resumed sweep whose spec changed only its run.budget: record the new one in spec.yaml
    (the report reads it from there)."""
    path = target / SPEC_FILE
    saved = parse_spec_yaml(path.read_text()) if path.is_file() else None
    current = json.loads(json.dumps(resolved_spec(plan)))
    if saved and (saved.get("run") or {}).get("budget") != current["run"].get("budget"):
        write_spec_yaml(target, resolved_spec(plan), provenance())


def _check_rule_kept(plan: Plan, saved: dict[str, Any], saved_path: Path) -> None:
    """A seed rule's looks, spending and level are fixed before the data: its error guarantee
    rests on them, so a study that adds seeds may not change its rule (nor turn into or out of
    one) once it has run; it may add arms, axis values and questions."""
    old, new = saved.get("seeds"), plan.spec.to_dict().get("seeds")
    if (isinstance(old, dict) or isinstance(new, dict)) and old != new:
        raise ResumeError(
            f"{plan.source}: --resume: seeds: the saved sweep in {saved_path.parent} runs with "
            f"seeds: {old} and the spec says {new}; the sequential rule's looks, spending and "
            f"alpha are fixed before any data (its error guarantee rests on that), so they "
            f"cannot change once it ran: resume with seeds as saved, or start a new sweep with "
            f"--set name=<new name>")


def _check_decisions_stand(plan: Plan, old: PlanRecord, new: PlanRecord, where: str) -> None:
    """Under arm-level early stopping the logged decisions carry over: every kept arm keeps its
    reference and whether it is protected."""
    if plan.spec.asha_unit != "arm":
        return
    moved = [a.name for a in new.arms if (o := old.arm(a.name)) is not None
             and (o.reference != a.reference
                  or (a.name in old.protected) != (a.name in new.protected))]
    if moved:
        raise ResumeError(
            f"{where}: the edited spec moves the reference (or the protection) of the arms "
            f"{', '.join(moved)}, on which the arm-level early stopping decisions already taken "
            f"rest; start a new sweep with --set name=<new name>")


def _set_aside(location: str, suffix: str) -> str | None:
    """Rename a file or folder (local or on a bucket) to `location + suffix + UTC time`; the new
    name, or None when there was nothing there."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    fs.move(path, f"{path}{suffix}{stamp}")
    return f"{location}{suffix}{stamp}"


def start_grown(plan: Plan, target: Path, growth: Growth, experiment_dir: str,
                notify: Callable[[str], None] | None = None) -> frozenset[str]:
    """Make the sweep folder the grown sweep's; the trial keys its fresh Tune experiment skips.

    Order matters for a driver killed in between: the old Tune experiment goes aside first (a
    repeated `--resume` finds the old spec.yaml and grows again), then spec.yaml gets the grown
    plan record, atomically, before any new trial starts."""
    if growth.diff.changed and plan.spec.asha_unit == "arm":
        for name in (RUNGS_FILE, DECISIONS_FILE):
            _set_aside(str(target / name), SUPERSEDED_SUFFIX)
    _set_aside(experiment_dir, GROWN_SUFFIX)
    spec: dict[str, Any] = resolved_spec(plan)
    write_spec_yaml(target, spec, provenance())
    skip = finished_keys(target) & {t.key for t in plan.trials}
    if notify is not None:
        d = growth.diff
        notify(f"the sweep grows ({', '.join(growth.keys)} changed): {len(skip)} finished trials "
               f"kept, {len(d.added)} new"
               + (f", {len(d.changed)} changed ones rerun (their old rows superseded)"
                  if d.changed else "")
               + f"; {plan.num_trials - len(skip)} to run")
    return skip
