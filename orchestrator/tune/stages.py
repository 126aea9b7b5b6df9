"""Paired seeds added until each question is decided (`seeds: {start, max}` in the spec): which
trials a study runs at each stage.

A stage is the plan restricted to the (arm, seed) pairs started so far. The first is every arm
at seeds 0..start-1. When a stage has ended with every trial finished, the sequential rule
(`orchestrator.sequential`, through `orchestrator.report.sequential`) looks at each question's
paired differences in trials.parquet; every question it leaves undecided gets more paired seeds
for both its arm and its reference (as many as the rule's next look needs, the next seeds in
order), and the next stage is the grown plan, which the runner runs the way `--resume` runs a
grown study (`orchestrator.tune.grow`): finished trials are kept, only the new ones run.

What ends the loop: no question needs more seeds (each is decided, or reached `max`), a question's
arm was stopped by arm-level early stopping (a stopped arm gets no seeds: its question keeps the
verdict the report gives a stopped arm), or the next batch does not fit `run.budget`.

Everything is a pure function of the plan and the Parquet tables, so a driver killed between two
stages derives the same next stage on `--resume`; the stage that ran last is the plan record in
spec.yaml (`current_stage` reads it back).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from orchestrator._provenance import parse_spec_yaml
from orchestrator.layout import SPEC_FILE, TRIALS_FILE
from orchestrator.plan.model import Plan
from orchestrator.plan.record import PlanRecord
from orchestrator.report.seed_rule import seed_rule, spent
from orchestrator.report.sequential import (
    SequentialVerdict,
    question_differences,
    sequential_verdicts,
)
from orchestrator.sequential import Design, seeds_wanted
from orchestrator.sinks.parquet import read_trials, table_exists
from orchestrator.spec.model import SeedRule

__all__ = ["NextStage", "current_stage", "describe", "design_of", "first_members", "next_stage",
           "study_rows"]

Member = tuple[str, int]          # (arm, seed)


def design_of(rule: SeedRule) -> Design:
    """The sequential rule's design for a spec's seed rule: the report's reading of spec.yaml
    (`report.seed_rule.seed_rule`), so that the driver and the report decide alike."""
    design = seed_rule({"seeds": rule.model_dump()})
    assert design is not None
    return design


def first_members(plan: Plan) -> frozenset[Member]:
    """Every arm at seeds 0..start-1."""
    rule = plan.spec.seed_rule
    assert rule is not None
    return frozenset((t.arm, t.seed) for t in plan.trials if t.seed < rule.start)


def _saved_members(sweep_dir: Path) -> frozenset[Member] | None:
    path = sweep_dir / SPEC_FILE
    if not path.is_file():
        return None
    try:
        saved = parse_spec_yaml(path.read_text()) or {}
        record = PlanRecord.from_dict(saved["plan"])
    except (KeyError, TypeError, ValueError, AttributeError, OSError):
        return None     # not a plan record: the resume check names what is wrong
    return frozenset((t.arm, t.seed) for t in record.trials)


def current_stage(plan: Plan, sweep_dir: Path) -> Plan:
    """The stage a run starts from: under a seed rule, the trials the saved plan record lists
    (the stage that ran last) with every arm's first `start` seeds (an arm the edited spec added
    starts there); the whole plan when the spec lists its seeds."""
    if plan.spec.seed_rule is None or plan.is_search:
        return plan
    saved = _saved_members(sweep_dir) or frozenset()
    members = first_members(plan) | saved
    # A saved trial the edited spec no longer plans stays out: the resume check then names it.
    return plan.restricted(members)


@dataclass(frozen=True)
class NextStage:
    """What the rule says after a stage: the next stage's plan (None: the study is done), the
    verdicts it rests on, the members it adds, and why it stops if it does."""

    plan: Plan | None
    verdicts: Mapping[tuple[str, str], SequentialVerdict]
    added: tuple[Member, ...]
    why_done: str = ""
    stopped: frozenset[str] = frozenset()       # arms early stopping stopped (no seeds added)


def _over_budget(plan: Plan, rows: pd.DataFrame, new: Collection[Member]) -> str:
    """Why the next batch (the trials of `new`) does not fit run.budget ("" if it does)."""
    budget = plan.spec.run.budget
    if budget is None:
        return ""
    by_member = {(t.arm, t.seed): t for t in plan.trials}
    batch_epochs = sum(by_member[m].config.train.epochs for m in new)
    gpu = plan.spec.run.resources_per_trial.gpu
    epochs, gpu_hours = spent(rows, gpu)
    if budget.trial_epochs is not None:
        if epochs + batch_epochs > budget.trial_epochs:
            return (f"run.budget.trial_epochs: {epochs:g} of {budget.trial_epochs} spent, and "
                    f"the next batch ({len(new)} trials) may take {batch_epochs} more")
        return ""
    assert budget.gpu_hours is not None
    rate = gpu_hours / epochs if epochs else 0.0
    need = rate * batch_epochs
    if gpu_hours + need > budget.gpu_hours:
        return (f"run.budget.gpu_hours: {gpu_hours:.3g} of {budget.gpu_hours:g} spent, and the "
                f"next batch ({len(new)} trials) may take about {need:.3g} more")
    return ""


def _next_seeds(plan: Plan, members: Collection[Member], arm: str, ref: str, count: int
                ) -> list[int]:
    """The next `count` seeds, in order, that `arm` and `ref` have not both started (a reference
    shared by several questions may have a seed already: only the arm's side is then new)."""
    rule = plan.spec.seed_rule
    assert rule is not None
    paired = {s for a, s in members if a == arm} & {s for a, s in members if a == ref}
    return [s for s in range(rule.max) if s not in paired][:count]


def next_stage(plan: Plan, stage: Plan, rows: pd.DataFrame) -> NextStage:
    """The stage after `stage` (every trial of which has finished), from the study's trials
    (trials.parquet's rows: arm, seed, status, metric_final, epochs_run, wall_time_s)."""
    rule = plan.spec.seed_rule
    assert rule is not None
    design = design_of(rule)
    ours = rows[rows["trial_key"].isin([t.key for t in stage.trials])]
    verdicts = sequential_verdicts(design, question_differences(ours, plan.questions),
                                   plan.spec.search.mode)
    stopped = set(ours.loc[ours["status"] == "stopped", "arm"])
    members = {(t.arm, t.seed) for t in stage.trials}
    open_ = {(arm, ref): v.state for (arm, ref), v in verdicts.items()
             if v.needs_more and arm not in stopped and ref not in stopped}
    add: dict[Member, None] = {}
    for (arm, ref), wanted in seeds_wanted(design, open_).items():
        for seed in _next_seeds(plan, members | set(add), arm, ref,
                                wanted - verdicts[(arm, ref)].seeds_paired):
            add.update({(arm, seed): None, (ref, seed): None})
    new = tuple(m for m in add if m not in members)
    if not new:
        return NextStage(None, verdicts, (), "every question is decided, reached its most seeds "
                         "or lost its arm to early stopping", frozenset(stopped))
    why = _over_budget(plan, ours, new)
    if why:
        return NextStage(None, verdicts, (), why, frozenset(stopped))
    return NextStage(plan.restricted(members | set(new)), verdicts, new, "", frozenset(stopped))


def study_rows(sweep_dir: Path) -> pd.DataFrame:
    """trials.parquet's rows the rule reads (empty when nothing has finished)."""
    cols = ["trial_key", "arm", "seed", "status", "metric_final", "epochs_run", "wall_time_s"]
    if not table_exists(sweep_dir, TRIALS_FILE):
        return pd.DataFrame(columns=cols)
    return read_trials(sweep_dir, decode_config=False, columns=cols)


def describe(result: NextStage) -> str:
    """One line for the user: each question's state and what the next stage adds."""
    parts = []
    for (arm, ref), v in result.verdicts.items():
        state = v.verdict + (f" at {v.decided_at} seeds" if v.decided_at else "")
        if arm in result.stopped:
            state = "arm stopped early"
        elif v.verdict == "undecided" and not math.isnan(v.state.p):
            state += f" (p {v.state.p:.3g}, boundary {v.state.boundary_p:.3g})"
        parts.append(f"{arm} vs {ref}: {state}")
    line = "; ".join(parts)
    if result.plan is None:
        return f"seeds: {line}. No seeds added: {result.why_done}"
    seeds = sorted({s for _, s in result.added})
    arms = sorted({a for a, _ in result.added})
    return (f"seeds: {line}. Adding seed(s) {', '.join(map(str, seeds))} to "
            f"{', '.join(arms)} ({len(result.added)} trials)")
