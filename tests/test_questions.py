"""The study's questions (spec `compare:`, issue 23 item 1): the key's shape, its resolution against
the plan's arms, and the shipped backbone studies asking exactly their locality questions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
