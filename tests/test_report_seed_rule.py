"""The report of a sweep whose seeds were added by a rule (spec `seeds: {start, max, ...}`): sweep
folders written by the real ParquetSink (tests/test_report.py's builder) with a different number
of seeds per arm. Each question's verdict, seeds_used, decided_at, boundary_p and seq_p are checked
against orchestrator.sequential.decide computed here from the same numbers; p_holm is blank; the
method text names the rule; an ordinary sweep's arms.csv keeps its columns."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from orchestrator.report import ARMS_CSV_COLUMNS, verdict_table, write_report
from orchestrator.sequential import Design, decide

RULE = {"start": 3, "max": 6, "batch": 1, "spending": "power:8", "alpha": 0.05}
DESIGN = Design(alpha=0.05, spending="power:8", start=3, max=6, batch=1)
REFS = {"localvit_micro": "baseline", "pvt_micro": "baseline", "localvit_pvt_micro": "pvt_micro",
        "tnt_micro": "baseline", "localvit_tnt_micro": "tnt_micro",
        "localvit_t2t_micro": "baseline"}
QUESTIONS = [("localvit_micro", "baseline"), ("localvit_pvt_micro", "pvt_micro"),
             ("localvit_tnt_micro", "tnt_micro"), ("localvit_t2t_micro", "baseline")]
BASE = [0.70, 0.81, 0.75, 0.78, 0.72, 0.74]
# Seeds per arm as the driver leaves them: a question's arm and reference get seeds together
# until it is decided (or max); arms that are only context keep `start`.
VALUES: dict[str, list[float]] = {
    "baseline": BASE[:5],
    "localvit_micro": [b + d for b, d in zip(BASE, [0.25, 0.18, 0.23, 0.21, 0.24], strict=False)],
    "pvt_micro": [0.95, 0.96, 0.955],
    "localvit_pvt_micro": [0.95 + 0.03125, 0.96 + 0.03125, 0.955 + 0.03125],  # the same gain
    "tnt_micro": [0.80, 0.83, 0.82, 0.81, 0.84, 0.82],
    "localvit_tnt_micro": [0.81, 0.82, 0.83, 0.80, 0.845, 0.815],             # no clear effect
}
STOPPED = "localvit_t2t_micro"            # a question arm stopped at a rung: no finished seed
STOP_REASON = ("arm: localvit_t2t_micro mean val/top1=0.31 over 3 seeds below rung-1 cutoff 0.6 "
               "at epoch 2 (rank 7 of 7; the best 6 go on)")


def _sweep(tmp_path: Path, values: dict[str, list[float]], *, seeds: Any = None,
           mode: str = "max", budget: dict | None = None, stopped: bool = True,
           compare: Any = None) -> Path:
    from test_report import METRIC, _plan_arm, _trial, build_sweep

    arms = {a: _plan_arm(reference=REFS.get(a)) for a in [*values, STOPPED]}
    spec = {"name": "rule", "base": {}, "baseline": {}, "axes": {}, "design": "ofat",
            "base_arm": "localvit_micro", "seeds": dict(RULE) if seeds is None else seeds,
            "references": {a: r for a, r in REFS.items() if r != "baseline"},
            "search": {"metric": METRIC, "mode": mode, "space": {}},
            "run": {"budget": budget},
            "compare": [{a: r} for a, r in QUESTIONS] if compare is None else compare,
            "plan": {"arms": arms, "protected": [], "asha_unit": None}}
    trials = [_trial(arm, seed, v) for arm, vs in values.items() for seed, v in enumerate(vs)]
    if stopped:
        trials += [_trial(STOPPED, s, 0.31, status="stopped", epochs=2, reason=STOP_REASON)
                   for s in range(3)]
    return build_sweep(tmp_path / "rule", spec, trials)


def _expected(values: dict[str, list[float]], design: Design = DESIGN) -> dict[str, Any]:
    """sequential.decide on the paired differences written out here (arm minus reference over
    the seeds both have, in seed order; the stopped arm has none but is in the family)."""
    diffs = {}
    for arm, ref in QUESTIONS:
        mine, theirs = values.get(arm, []), values.get(ref, [])
        diffs[arm] = [a - r for a, r in zip(mine, theirs, strict=False)]
    return decide(design, diffs)


def _blank(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA


@pytest.fixture(scope="module")
def rule_report(tmp_path_factory):
    return write_report(_sweep(tmp_path_factory.mktemp("rule"), VALUES))


def test_question_verdicts_are_the_sequential_rules(rule_report):
    csv = pd.read_csv(rule_report.directory / "arms.csv").set_index("arm")
    expected = _expected(VALUES)
    # The scenario covers each kind of answer.
    assert expected["localvit_micro"].verdict == "better"
    assert expected["localvit_micro"].decided_at is not None
    assert expected["localvit_pvt_micro"].verdict == "better"
    assert expected["localvit_pvt_micro"].decided_at == 3         # identical gain: first look
    assert expected["localvit_tnt_micro"].verdict == "n.s."       # reached max 6
    for arm, _ in QUESTIONS[:3]:
        st, row = expected[arm], csv.loc[arm]
        assert row["verdict"] == st.verdict, arm
        assert row["seeds_used"] == st.n, arm
        assert (None if _blank(row["decided_at"]) else int(row["decided_at"])) == st.decided_at
        assert row["boundary_p"] == pytest.approx(st.boundary_p, rel=1e-6)
        assert row["seq_p"] == pytest.approx(st.p, abs=1e-300, rel=1e-6)
        assert _blank(row["p_holm"]), arm               # fixed-seed Holm does not apply
        assert row["question"]
    # p_value stays the paired t-test over every paired seed (5 for localvit_micro).
    assert csv.loc["localvit_micro", "p_value"] == pytest.approx(
        sps.ttest_rel(VALUES["localvit_micro"], VALUES["baseline"]).pvalue, rel=1e-9)
    assert csv.loc["localvit_micro", "seeds_used"] <= 5
    # The stopped question arm stays in the family (m = 4: the levels start at alpha / 4) and
    # keeps today's verdict for a stopped arm.
    assert csv.loc[STOPPED, "verdict"] == "stopped at rung 1 (epoch 2)"
    assert csv.loc[STOPPED, "seeds_used"] == 0 and _blank(csv.loc[STOPPED, "decided_at"])
    # Without it (a family of 3) the open question would test at a higher level.
    three = decide(DESIGN, {a: [x - y for x, y in zip(VALUES[a], VALUES[r], strict=False)]
                            for a, r in QUESTIONS[:3]})
    assert expected["localvit_tnt_micro"].level == pytest.approx(DESIGN.alpha / 2)
    assert three["localvit_tnt_micro"].boundary_p > csv.loc["localvit_tnt_micro", "boundary_p"]


def test_comparisons_outside_the_questions_stay_descriptive(rule_report):
    csv = pd.read_csv(rule_report.directory / "arms.csv").set_index("arm")
    for arm in ("pvt_micro", "tnt_micro"):
        row = csv.loc[arm]
        assert row["verdict"] == "descriptive" and not row["question"]
        for col in ("p_value", "p_holm", "seeds_used", "decided_at", "boundary_p", "seq_p"):
            assert _blank(row[col]), (arm, col)
        n = len(VALUES[arm]) if arm == "pvt_micro" else 5          # baseline has 5 seeds
        assert row["diff"] == pytest.approx(
            float(np.mean(np.subtract(VALUES[arm][:n], VALUES["baseline"][:n]))))
    assert csv.loc["baseline", "verdict"] == "reference"


def test_arms_csv_of_a_rule_sweep_appends_the_rules_columns(rule_report):
    header = (rule_report.directory / "arms.csv").read_text().splitlines()[0]
    assert header == ",".join([*ARMS_CSV_COLUMNS, "seeds_used", "decided_at", "boundary_p",
                               "seq_p"])
    # Counts are written as integers, blanks as empty cells.
    line = next(x for x in (rule_report.directory / "arms.csv").read_text().splitlines()
                if x.startswith("localvit_pvt_micro,"))
    assert ",True,3,3," in line
    line = next(x for x in (rule_report.directory / "arms.csv").read_text().splitlines()
                if x.startswith("pvt_micro,"))
    assert line.endswith(",False,,,,")


def test_method_text_and_tables_name_the_rule(rule_report):
    md = (rule_report.directory / "ablation.md").read_text()
    tex = (rule_report.directory / "ablation.tex").read_text()
    html = (rule_report.directory / "ablation.html").read_text()
    for needle in ("start 3, max 6, batch 1, spending power:8", "alpha 0.05",
                   "study's 4 question(s)", "Maurer & Bretz 2013", "alpha/4", "`seeds_used`",
                   "docs/statistics_sequential.md"):
        assert needle in md, needle
    assert "Holm's correction over" not in md and "Holm p <" not in md
    assert "statistics\\_sequential.md" in tex and "Maurer &amp; Bretz 2013" in html
    st = _expected(VALUES)
    # Each question row shows its seeds: a note and the table's seeds column.
    assert (f"localvit_micro: sequential rule: decided at {st['localvit_micro'].decided_at} "
            f"paired seeds") in md
    assert "localvit_tnt_micro: sequential rule: n.s. at 6 paired seeds, the rule's max" in md
    assert "| seeds (rule) |" in md and "| decided at 3 |" in md and "| 6 of 6 |" in md
    assert "counts identical non-zero differences as t = ±inf (p = 0" in md
    assert "stay in the family" in md
    assert "seeds 0, 1, 2, 3, 4, 5 (3 to 6 per arm)" in md
    assert "not questions of the study: they are descriptive" in md and \
        "not in the rule's family" in md


def test_terminal_verdict_table_shows_the_rules_seeds(rule_report):
    from rich.console import Console

    console = Console(width=80, record=True)
    console.print(verdict_table(rule_report))
    text = console.export_text()
    assert "seeds (rule)" in text and "p (Holm)" not in text
    assert "decided at 3" in text and "6 of 6" in text


def test_run_ended_before_max_is_undecided_and_says_what_can_be_told(tmp_path):
    # The no-effect question ended at 4 seeds: undecided, with or without a budget.
    values = {**VALUES, "tnt_micro": VALUES["tnt_micro"][:4],
              "localvit_tnt_micro": VALUES["localvit_tnt_micro"][:4]}
    st = _expected(values)["localvit_tnt_micro"]
    assert st.verdict == "undecided" and st.n == 4
    rep = write_report(_sweep(tmp_path / "a", values, stopped=False,
                              budget={"trial_epochs": 90, "gpu_hours": None}))
    row = rep.arms.set_index("arm").loc["localvit_tnt_micro"]
    assert row["verdict"] == "undecided" and row["seeds_used"] == 4
    assert _blank(row["decided_at"])
    spent = 4 * (len(BASE[:5]) * 2 + 3 * 2 + 4 * 2)          # _trial's 4 epochs per trial
    assert any(f"run.budget of 90 trial-epochs, {spent} spent: the budget was spent, or the "
               f"run was interrupted" in n for n in row["notes"])
    md = (rep.directory / "ablation.md").read_text()
    assert "| 4 of 6 | " in md and "| undecided |" in md
    assert "study's 4 question(s)" in md             # the stopped arm's question is still asked
    rep = write_report(_sweep(tmp_path / "b", values, stopped=False))
    row = rep.arms.set_index("arm").loc["localvit_tnt_micro"]
    assert any("no run.budget: the run was interrupted or is still running" in n
               for n in row["notes"])


def test_a_metric_to_minimise_flips_the_direction(tmp_path):
    # The same study on an error metric (1 - accuracy): the same arms are better.
    errors = {a: [1.0 - v for v in vs] for a, vs in VALUES.items()}
    rep = write_report(_sweep(tmp_path, errors, mode="min", stopped=False))
    rows = rep.arms.set_index("arm")
    assert rows.loc["localvit_micro", "verdict"] == "better"
    assert rows.loc["localvit_pvt_micro", "verdict"] == "better"
    assert rows.loc["localvit_tnt_micro", "verdict"] == "n.s."


def test_an_ordinary_sweep_keeps_holm_and_its_columns(tmp_path):
    values = {a: vs[:3] for a, vs in VALUES.items()}
    rep = write_report(_sweep(tmp_path, values, seeds=[0, 1, 2], stopped=False))
    text = (rep.directory / "arms.csv").read_text()
    assert text.splitlines()[0] == ("arm,baseline,n_completed,n_stopped,mean,std,ci_low,"
                                    "ci_high,diff,p_value,p_holm,verdict,params,macs,question")
    rows = rep.arms.set_index("arm")
    assert "seeds_used" not in rep.arms.columns
    assert not _blank(rows.loc["localvit_micro", "p_holm"])
    md = (rep.directory / "ablation.md").read_text()
    assert "Holm's correction over the study's 4 question(s)" in md
    assert "sequential" not in md and "| p (Holm) |" in md
