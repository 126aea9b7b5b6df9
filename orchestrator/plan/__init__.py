"""A spec expanded into the trials a sweep runs: `design` (build_plan: arms, references, trials,
each config validated once), `naming` (the design's points and their arm names), `checks` (the
schema, the trainer's checks and the metric, with the spec key in every message), `keys` (trial
keys), `model` (the frozen plan types) and `estimate` (what a plan costs, for `--dry-run`)."""

from orchestrator.plan.design import build_plan
from orchestrator.plan.keys import trial_key
from orchestrator.plan.model import Arm, Plan, PlannedTrial, SampleResolver, resolve_sample
from orchestrator.plan.naming import format_overrides

__all__ = ["Arm", "Plan", "PlannedTrial", "SampleResolver", "build_plan", "format_overrides",
           "resolve_sample", "trial_key"]
