"""The sequential rule's verdicts from the report's inputs (orchestrator/report/sequential.py), on
made-up rows shaped like trials.parquet: pairing by seed, the family, the direction by the
metric's mode, and agreement with orchestrator.sequential.decide itself."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from orchestrator.report.sequential import (
    question_differences,
    report_differences,
    sequential_table,
    sequential_verdicts,
)
from orchestrator.sequential import Design, decide

DESIGN = Design(start=3, max=8)
QUESTIONS = [("localvit_micro", "baseline"), ("localvit_pvt_micro", "pvt_micro"),
             ("localvit_tnt_micro", "tnt_micro")]


def trials_frame(values: dict[str, list[float | None]], failed: dict[str, int] | None = None
                 ) -> pd.DataFrame:
    """trials.parquet's columns that matter: one completed row per (arm, seed), failed where
    `failed` says (its metric NaN)."""
    rows = []
    for arm, vs in values.items():
        for seed, v in enumerate(vs):
            bad = (failed or {}).get(arm) == seed
            rows.append(dict(arm=arm, seed=seed, status="failed" if bad else "completed",
                             metric_final=math.nan if bad or v is None else v,
                             trial_key=f"{arm}-{seed}", epochs_run=15))
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)      # row order is not seed order


BASE = [0.70, 0.81, 0.75, 0.78, 0.72]
VALUES: dict[str, list[float | None]] = {
    "baseline": list(BASE),
    "localvit_micro": [b + d for b, d in zip(BASE, [0.25, 0.18, 0.23, 0.21, 0.26], strict=True)],
    "pvt_micro": [0.95, 0.96, 0.955, 0.95, 0.96],
    "localvit_pvt_micro": [0.95 + 0.03125, 0.96 + 0.03125, 0.955 + 0.03125, 0.95 + 0.03125,
                           0.96 + 0.03125],                  # the same gain on every seed
    "tnt_micro": [0.80, 0.83, 0.82, 0.81, 0.84],
    "localvit_tnt_micro": [0.81, 0.82, 0.83, 0.80, 0.845],   # no clear effect
}


def test_paired_differences_in_seed_order_without_failed_seeds():
    diffs = question_differences(trials_frame(VALUES, failed={"tnt_micro": 1}), QUESTIONS)
    assert list(diffs) == QUESTIONS
    assert diffs[QUESTIONS[0]] == pytest.approx([0.25, 0.18, 0.23, 0.21, 0.26])
    assert diffs[QUESTIONS[1]] == pytest.approx([0.03125] * 5)
    # seed 1 of the reference failed: that pair is left out, the others keep their order
    assert diffs[QUESTIONS[2]] == pytest.approx([0.01, 0.01, -0.01, 0.005])


def test_verdicts_seeds_used_and_decided_at_match_sequential_decide():
    trials = trials_frame(VALUES)
    table = sequential_table(DESIGN, trials, QUESTIONS).set_index("arm")
    diffs = question_differences(trials, QUESTIONS)
    states = decide(DESIGN, {f"{a} vs {r}": d for (a, r), d in diffs.items()})
    for (arm, ref), st in zip(QUESTIONS, states.values(), strict=True):
        row = table.loc[arm]
        assert row["reference"] == ref
        assert (row["verdict"], row["seeds_used"], row["needs_more"]) == \
            (st.verdict, st.n, st.needs_more)
        assert (None if pd.isna(row["decided_at"]) else row["decided_at"]) == st.decided_at
        assert row["seeds_paired"] == 5
    # The same gain on every seed is evidence: decided at the first look (3 seeds).
    assert table.loc["localvit_pvt_micro", "verdict"] == "better"
    assert table.loc["localvit_pvt_micro", "decided_at"] == 3
    # +0.23 +- 0.03 on every seed: decided by 5 seeds, before max.
    assert table.loc["localvit_micro", "verdict"] == "better"
    assert table.loc["localvit_micro", "decided_at"] <= 5
    # No clear effect: undecided, it wants more seeds (5 of max 8).
    assert table.loc["localvit_tnt_micro", "verdict"] == "undecided"
    assert table.loc["localvit_tnt_micro", "needs_more"]


def test_the_family_is_the_questions_given():
    diffs = question_differences(trials_frame(VALUES), QUESTIONS)
    alone = sequential_verdicts(DESIGN, {QUESTIONS[0]: diffs[QUESTIONS[0]]})
    three = sequential_verdicts(DESIGN, diffs)
    # One question alone starts at level alpha, one of three at alpha / 3.
    assert alone[QUESTIONS[0]].state.level == pytest.approx(DESIGN.alpha)
    assert min(v.state.level for v in three.values()) == pytest.approx(DESIGN.alpha / 3)


def test_a_metric_to_minimise_swaps_better_and_worse():
    diffs = {("a", "r"): [0.2, 0.21, 0.19, 0.2]}
    assert sequential_verdicts(DESIGN, diffs, "max")[("a", "r")].verdict == "better"
    assert sequential_verdicts(DESIGN, diffs, "min")[("a", "r")].verdict == "worse"
    undecided = {("a", "r"): [0.1, -0.1, 0.05]}
    assert sequential_verdicts(DESIGN, undecided, "min")[("a", "r")].verdict == "undecided"
    with pytest.raises(ValueError, match="mode"):
        sequential_verdicts(DESIGN, diffs, "maximize")


def test_at_max_without_crossing_is_ns_and_too_few_seeds_is_undecided():
    rng = np.random.default_rng(0)
    null = [float(x) for x in rng.normal(0.0, 0.01, 8)]
    out = sequential_verdicts(DESIGN, {("a", "r"): null, ("b", "r"): [0.1]})
    assert out[("a", "r")].verdict == "n.s." and out[("a", "r")].seeds_used == 8
    assert not out[("a", "r")].needs_more and out[("a", "r")].decided_at is None
    assert out[("b", "r")].verdict == "undecided" and out[("b", "r")].seeds_used == 1


def test_differences_from_the_reports_rows():
    arms = pd.DataFrame([
        dict(arm="baseline", baseline="", question=False, values={0: 0.7, 1: 0.8, 2: 0.75}),
        dict(arm="pvt_micro", baseline="baseline", question=False, values={0: 0.9, 1: 0.9}),
        dict(arm="localvit_pvt_micro", baseline="pvt_micro", question=True,
             values={0: 0.95, 1: 0.96, 2: 0.97}),
        dict(arm="localvit_micro", baseline="baseline", question=True,
             values={2: 0.98, 0: 0.99, 1: 0.97}),
    ])
    diffs = report_differences(arms)
    assert list(diffs) == [("localvit_pvt_micro", "pvt_micro"), ("localvit_micro", "baseline")]
    assert diffs[("localvit_pvt_micro", "pvt_micro")] == pytest.approx([0.05, 0.06])
    assert diffs[("localvit_micro", "baseline")] == pytest.approx([0.29, 0.17, 0.23])
