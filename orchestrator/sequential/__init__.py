"""Paired seeds added until each of a study's questions is decided (docs/statistics_sequential.md):
the decision rule (rule), its group-sequential boundaries (bounds), their calibration to the paired
t statistics (calibration) and the simulation that checks the rule's error rates (simulation)."""

from orchestrator.sequential.rule import (
    BatchDecision,
    Design,
    QuestionState,
    SeqVerdict,
    boundary_p,
    decide,
    decide_arrays,
    look_statistics,
    seeds_wanted,
)

__all__ = ["BatchDecision", "Design", "QuestionState", "SeqVerdict", "boundary_p", "decide",
           "decide_arrays", "look_statistics", "seeds_wanted"]
