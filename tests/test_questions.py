"""The study's questions (spec `compare:`, issue 23 item 1): the key's shape, its resolution against
the plan's arms, and the shipped backbone studies asking exactly their locality questions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from orchestrator.errors import PlanError, SpecError
from orchestrator.plan import build_plan
from orchestrator.spec import spec_from_dict

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
BACKBONES_CPU = yaml.safe_load((SPACES / "backbones_cpu.yaml").read_text())
LOCALITY_CPU = (("localvit_micro", "baseline"), ("localvit_pvt_micro", "pvt_micro"),
                ("localvit_tnt_micro", "tnt_micro"), ("localvit_t2t_micro", "t2t_vit_micro"),
                ("localvit_swin_micro", "swin_micro"))


def cpu_plan(compare: Any):
    raw = {k: v for k, v in BACKBONES_CPU.items() if k != "compare"}
    if compare is not None:
        raw["compare"] = compare
    spec = spec_from_dict(raw, source="b.yaml")
    return build_plan(spec, source="b.yaml", data_required=False)


def test_without_compare_every_arm_against_its_reference_is_a_question():
    plan = cpu_plan(None)
    assert plan.questions == tuple((a.name, plan.references[a.name]) for a in plan.arms
                                   if a.name != "baseline")
    assert len(plan.questions) == 9
    assert cpu_plan("references").questions == plan.questions


def test_the_leaves_rule_asks_each_arm_that_is_nobodys_reference():
    assert cpu_plan("leaves").questions == LOCALITY_CPU


def test_a_list_of_pairs_resolves_aliases_and_keeps_its_order():
    # "backbone=pvt_micro" is no alias here (pvt_micro is a named arm); the base arm is.
    plan = cpu_plan([{"localvit_swin_micro": "swin_micro"}, {"localvit_micro": "baseline"}])
    assert plan.questions == (("localvit_swin_micro", "swin_micro"),
                              ("localvit_micro", "baseline"))
    # An ofat axis value equal to base is an alias of the base arm.
    raw = {"name": "t", "base": {"model": {"backbone": "localvit_micro",
                                           "locality": {"act": "hs+se"}},
                                 "data": {"name": "digits"}, "train": {"epochs": 2}},
           "baseline": {"model.backbone": "vit_micro"}, "base_arm": "localvit",
           "axes": {"model.locality.act": ["hs+se", "relu6"]}, "seeds": [0, 1],
           "compare": [{"act=hs+se": "baseline"}]}
    plan = build_plan(spec_from_dict(raw, source="t.yaml"), source="t.yaml",
                      data_required=False)
    assert plan.questions == (("localvit", "baseline"),)


@pytest.mark.parametrize("compare,needle", [
    ([{"localvit_pvt_mcro": "pvt_micro"}],
     "b.yaml: compare.localvit_pvt_mcro: no arm named 'localvit_pvt_mcro'; did you mean "
     "'localvit_pvt_micro'?"),
    ([{"localvit_pvt_micro": "pvt_mikro"}], "no arm named 'pvt_mikro'"),
    ([{"localvit_pvt_micro": "baseline"}],
     "compare.localvit_pvt_micro: 'localvit_pvt_micro' is measured against 'pvt_micro' (its "
     "reference), not 'baseline'; a question compares an arm with its own reference: write "
     "`localvit_pvt_micro: pvt_micro`, or make 'baseline' its reference with `references: "
     "{localvit_pvt_micro: baseline}`"),
    ([{"baseline": "pvt_micro"}], "compare.baseline: 'baseline' is the study's baseline"),
    ([{"localvit_micro": "baseline"}, {"localvit_micro": "baseline"}], "is asked twice"),
])
def test_questions_the_plan_cannot_answer_name_the_key_and_the_fix(compare, needle):
    with pytest.raises(PlanError) as err:
        cpu_plan(compare)
    assert needle in str(err.value)


@pytest.mark.parametrize("compare,needle", [
    ("refs", "compare: unknown rule 'refs'; did you mean 'references'?"),
    ([], "compare: got an empty list"),
    (3, "compare: got int"),
    ([{"a": "b", "c": "d"}], "compare: item 1 ({a: b, c: d}) is not one `arm: reference` pair"),
    ([{"a": ["b"]}], "is not one `arm: reference` pair"),
    (["a"], "item 1 ('a') is not one"),
])
def test_malformed_compare_is_a_spec_error(compare, needle):
    with pytest.raises(SpecError) as err:
        spec_from_dict({**BACKBONES_CPU, "compare": compare}, source="b.yaml")
    assert needle in str(err.value) and str(err.value).startswith("b.yaml: ")


def test_a_search_has_nothing_to_compare():
    spec = yaml.safe_load((SPACES / "hpo.yaml").read_text())
    with pytest.raises(SpecError, match="hpo.yaml: compare: a search over search.space has no "
                                        "arms to compare"):
        spec_from_dict({**spec, "compare": "leaves"}, source="hpo.yaml")


# ------------------------------------------------------------------------------ in the report

def _sweep(tmp_path: Path, values: dict[str, list[float]], compare: Any) -> Path:
    """A backbone-like sweep folder written by the real ParquetSink (tests/test_report.py's
    helper): every arm's final value per seed, each LocalViT variant against its own backbone."""
    from test_report import METRIC, _plan_arm, _trial, build_sweep

    refs = {"localvit_micro": "baseline", "pvt_micro": "baseline",
            "localvit_pvt_micro": "pvt_micro", "tnt_micro": "baseline",
            "localvit_tnt_micro": "tnt_micro"}
    arms = {a: _plan_arm(reference=refs.get(a)) for a in values}
    spec = {"name": "bb", "base": {}, "baseline": {}, "axes": {}, "design": "ofat",
            "base_arm": "localvit_micro", "seeds": list(range(len(values["baseline"]))),
            "references": {a: r for a, r in refs.items() if r != "baseline"},
            "search": {"metric": METRIC, "mode": "max", "space": {}},
            "plan": {"arms": arms, "protected": [], "asha_unit": None}}
    if compare is not None:
        spec["compare"] = compare
    trials = [_trial(arm, seed, v) for arm, vs in values.items() for seed, v in enumerate(vs)]
    return build_sweep(tmp_path / "bb", spec, trials)


BB = {"baseline": [0.70, 0.81, 0.75],
      "localvit_micro": [0.98, 0.99, 0.985],
      "pvt_micro": [0.95, 0.96, 0.955],
      "localvit_pvt_micro": [0.95 + 0.03125, 0.96 + 0.03125, 0.955 + 0.03125],  # zero variance
      "tnt_micro": [0.80, 0.83, 0.82],
      "localvit_tnt_micro": [0.98, 0.985, 0.99]}
QUESTIONS = [{"localvit_micro": "baseline"}, {"localvit_pvt_micro": "pvt_micro"},
             {"localvit_tnt_micro": "tnt_micro"}]


def _p(arm: str, ref: str) -> float:
    from scipy import stats as sps

    return float(sps.ttest_rel(BB[arm], BB[ref]).pvalue)


def test_only_the_questions_form_holms_family_and_the_rest_is_descriptive(tmp_path):
    from statsmodels.stats.multitest import multipletests

    from orchestrator.report import write_report

    rep = write_report(_sweep(tmp_path, BB, QUESTIONS))
    rows = rep.arms.set_index("arm")
    # The zero-variance question's p is the exact sign-flip test's: 2 / 2^3.
    ps = {"localvit_micro": _p("localvit_micro", "baseline"), "localvit_pvt_micro": 0.25,
          "localvit_tnt_micro": _p("localvit_tnt_micro", "tnt_micro")}
    holm = dict(zip(ps, multipletests(list(ps.values()), method="holm")[1], strict=True))
    for arm, p in ps.items():
        assert rows.loc[arm, "question"]
        assert rows.loc[arm, "p_value"] == pytest.approx(p, rel=1e-9)
        assert rows.loc[arm, "p_holm"] == pytest.approx(holm[arm], rel=1e-9)
    assert rows.loc["localvit_pvt_micro", "verdict"] == "n.s."      # 0.25: not at 3 seeds
    assert rows.loc["localvit_tnt_micro", "verdict"] == "better"
    for arm in ("pvt_micro", "tnt_micro"):                          # context, not questions
        row = rows.loc[arm]
        assert not row["question"] and row["verdict"] == "descriptive"
        assert pd_isna(row["p_value"]) and pd_isna(row["p_holm"]) and pd_isna(row["wilcoxon_p"])
        assert row["diff"] == pytest.approx(float(np.mean(np.subtract(BB[arm],
                                                                      BB["baseline"]))))
        assert row["diff_ci_low"] < row["diff"] < row["diff_ci_high"]
    assert not rows.loc["baseline", "question"]
    csv = (rep.directory / "arms.csv").read_text().splitlines()
    assert csv[0].endswith(",question") and csv[2].endswith(",True")
    md = (rep.directory / "ablation.md").read_text()
    assert ("Holm's correction over the study's 3 question(s) (spec `compare`: localvit_micro vs "
            "baseline; localvit_pvt_micro vs pvt_micro; localvit_tnt_micro vs tnt_micro) "
            "(statsmodels)") in md
    assert ("The other 2 comparison(s) of an arm with its reference are not questions of the "
            "study: they are descriptive (difference and 95% interval; no p, not in Holm's "
            "family, verdict 'descriptive').") in md
    assert "exact two-sided sign-flip permutation test of the mean difference" in md
    assert "localvit_pvt_micro: the paired differences have zero variance (t undefined): p is " \
           "the exact two-sided sign-flip permutation test over all 2^3 sign patterns" in md
    assert "| pvt_micro | baseline | 3/0 |" in md and "| descriptive |" in md


def test_without_compare_every_comparison_is_in_the_family(tmp_path):
    from statsmodels.stats.multitest import multipletests

    from orchestrator.report import write_report

    rep = write_report(_sweep(tmp_path, BB, None))
    rows = rep.arms.set_index("arm")
    pairs = [("localvit_micro", "baseline"), ("pvt_micro", "baseline"),
             ("localvit_pvt_micro", "pvt_micro"), ("tnt_micro", "baseline"),
             ("localvit_tnt_micro", "tnt_micro")]
    ps = [0.25 if a == "localvit_pvt_micro" else _p(a, r) for a, r in pairs]
    holm = multipletests(ps, method="holm")[1]
    for (arm, _), p, adjusted in zip(pairs, ps, holm, strict=True):
        assert rows.loc[arm, "question"]
        assert rows.loc[arm, "p_value"] == pytest.approx(p, rel=1e-9)
        assert rows.loc[arm, "p_holm"] == pytest.approx(adjusted, rel=1e-9)
    md = (rep.directory / "ablation.md").read_text()
    assert "Holm's correction over the 5 comparison(s) with a p" in md
    assert "question(s)" not in md


def test_a_difference_identical_on_six_seeds_is_significant_by_the_exact_test(tmp_path):
    from orchestrator.report import write_report

    base = [0.90, 0.91, 0.92, 0.93, 0.94, 0.95]
    values = {"baseline": base, "localvit_micro": [v + 0.03125 for v in base]}
    rep = write_report(_sweep(tmp_path, values, None))
    row = rep.arms.set_index("arm").loc["localvit_micro"]
    assert row["p_value"] == 0.03125 == 2 / 2**6
    assert row["p_holm"] == 0.03125 and row["verdict"] == "better"


def test_the_exact_sign_flip_test():
    from orchestrator.report.stats import sign_flip_p

    assert sign_flip_p([0.033] * 3) == 0.25
    assert sign_flip_p([0.033] * 6) == 0.03125
    assert sign_flip_p([-0.033] * 6) == 0.03125
    assert sign_flip_p([0.0] * 4) == 1.0
    # |sum| of +-0.1 +-0.1 +-0.2 is 0.4, 0.2, 0.2, 0, 0, 0.2, 0.2, 0.4: 6 of 8 reach 0.2.
    assert sign_flip_p([0.1, -0.1, 0.2]) == 0.75
    # Beyond 16 pairs, one magnitude: the binomial law (19 of 20 positive: 2 * 21 / 2^20).
    assert sign_flip_p([0.5] * 19 + [-0.5]) == pytest.approx(42 / 2**20, rel=1e-12)
    assert sign_flip_p([0.5] * 12 + [-0.5] * 4) == pytest.approx(
        2 * sum(math.comb(16, k) for k in range(12, 17)) / 2**16, rel=1e-12)
    with pytest.raises(ValueError, match="too many"):
        sign_flip_p(list(np.linspace(0.1, 1.0, 17)))


def pd_isna(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


# --------------------------------------------------------------------------- the shipped YAMLs

def test_backbones_cpu_asks_exactly_the_five_locality_questions():
    from orchestrator.spec import load_spec

    spec = load_spec(SPACES / "backbones_cpu.yaml")
    plan = build_plan(spec, source="backbones_cpu.yaml", data_required=False)
    assert plan.questions == LOCALITY_CPU
    # Every question is a LocalViT variant against its plain backbone (the baseline: ViT-micro).
    backbone = {t.arm: t.backbone for t in plan.trials}
    for arm, ref in plan.questions:
        assert backbone[arm].startswith("localvit") and not backbone[ref].startswith("localvit")
    assert {backbone[ref] for _, ref in plan.questions} == {
        "vit_micro", "pvt_micro", "tnt_micro", "t2t_vit_micro", "swin_micro"}
    # The rule says the same as the list.
    assert cpu_plan("leaves").questions == plan.questions


def test_backbones_asks_one_locality_question_per_backbone():
    from orchestrator.spec import load_spec

    spec = load_spec(SPACES / "backbones.yaml")
    plan = build_plan(spec, source="backbones.yaml", data_required=False)
    backbone = {t.arm: t.backbone for t in plan.trials}
    pairs = {(backbone[a], backbone[r]) for a, r in plan.questions}
    assert pairs == {("localvit_tiny", "deit_tiny"), ("localvit_small", "deit_small"),
                     ("localvit_pvt_tiny", "pvt_tiny"), ("localvit_tnt_tiny", "tnt_tiny"),
                     ("localvit_t2t_7", "t2t_vit_7"), ("localvit_swin_tiny", "swin_tiny")}
    # Each plain backbone is a reference, so arm-level halving never stops it.
    assert {r for _, r in plan.questions} <= set(plan.protected)


def test_questions_of_arms_that_smoke_merges_are_one_question_each():
    # --smoke shrinks DeiT-T and DeiT-S (and their LocalViT twins) to the same micro models:
    # the two DeiT questions become one question of the merged arms, not an error.
    from orchestrator.spec import load_spec
    from orchestrator.spec.smoke import shrink_spec

    spec = shrink_spec(load_spec(SPACES / "backbones.yaml"))
    plan = build_plan(spec, source="backbones.yaml", smoke=True, data_required=False)
    backbone = {t.arm: t.backbone for t in plan.trials}
    assert sorted((backbone[a], backbone[r]) for a, r in plan.questions) == [
        ("localvit_micro", "vit_micro"), ("localvit_pvt_micro", "pvt_micro"),
        ("localvit_swin_micro", "swin_micro"), ("localvit_t2t_micro", "t2t_vit_micro"),
        ("localvit_tnt_micro", "tnt_micro")]


def test_the_dry_run_lists_the_questions(capsys):
    from orchestrator.sweep import main

    assert main([str(SPACES / "backbones_cpu.yaml"), "--dry-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("questions (the tested family): 5: localvit_micro vs baseline; localvit_pvt_micro vs "
            "pvt_micro; localvit_tnt_micro vs tnt_micro; localvit_t2t_micro vs t2t_vit_micro; "
            "localvit_swin_micro vs swin_micro") in out
    assert main([str(SPACES / "quickstart.yaml"), "--dry-run"]) == 0
    assert "questions" not in capsys.readouterr().out
