"""--dry-run without Ray: the compute estimate has the same numbers as building and tracing every
distinct model (the estimate before trainers.profile.MacCounter) and takes few traces for a large
factorial; the arm table shows every name whole on an 80-column terminal."""

import json

import pytest
import torch

from orchestrator.plan import build_plan
from orchestrator.plan.estimate import estimate_plan
from orchestrator.spec import spec_from_dict
from trainers import profile

# The whole-model trace of each distinct model (and image size), shared by the cases: one model
# traces to the same count whichever plan it is in.
_TRACED: dict[str, float] = {}


def reference_estimate(plan):
    """The estimate as it was computed before MacCounter: every distinct model built on the meta
    device (on the CPU where it cannot be) and traced whole, the trials summed in plan order."""
    from trainers import data as data_lib, registry
    from trainers.train import resolve_img_size

    cache, per_model, total, assumed = _TRACED, {}, 0.0, False
    configs = [t.config for t in plan.trials] or [plan.search_base] * plan.num_trials
    for cfg in configs:
        tc = cfg
        img = resolve_img_size(tc)
        ident = json.dumps([tc.model.model_dump(mode="json"), img], sort_keys=True)
        if ident not in cache:
            try:
                with torch.device("meta"):
                    model = registry.build_from_config(tc.model, num_classes=10, img_size=img)
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                model = registry.build_from_config(tc.model, num_classes=10, img_size=img)
            cache[ident] = profile.count_macs(model, img)
        macs, label = cache[ident], f"{tc.model.backbone}@{img}px"
        lo, hi = per_model.get(label, (macs, macs))
        per_model[label] = (min(lo, macs), max(hi, macs))
        data = cfg.data
        n_train = data_lib.train_size(data)
        if n_train is None:
            n_train, n_val, assumed = 1_281_167, 50_000, True
        else:
            n_val = {"digits": 1797 - n_train, "synthetic": data.synthetic_val}.get(data.name,
                                                                                     10_000)
        if cfg.train.steps_per_epoch:
            n_train = min(n_train, cfg.train.steps_per_epoch * cfg.train.batch_size)
        total += macs * (3 * n_train + n_val) * cfg.train.epochs
    return (len(configs), sum(c.train.epochs for c in configs), total, per_model, assumed)


def spec(**changes):
    raw = {
        "name": "est",
        "base": {"model": {"backbone": "localvit_micro"}, "data": {"name": "digits"},
                 "train": {"epochs": 3, "batch_size": 32, "ema": False}},
        "baseline": {"model.backbone": "vit_micro", "model.locality": None},
        "design": "factorial",
        "axes": {"model.locality.act": ["relu6", "hs+se", "hs+eca"],
                 "model.locality.layers": ["1-2", "all"],
                 "model.locality.expansion": [1, 4],
                 "model.locality.dw_conv": [True, False]},
        "arms": {"swin": {"model.backbone": "localvit_swin_micro", "model.locality": "default"},
                 "pvt": {"model.backbone": "localvit_pvt_micro", "model.locality": "default"},
                 "tnt": {"model.backbone": "localvit_tnt_micro", "model.locality": "default"},
                 "t2t": {"model.backbone": "localvit_t2t_micro", "model.locality": "default"},
                 "long": {"train.epochs": 7, "train.steps_per_epoch": 2}},
        "seeds": [0, 1, 2],
    }
    raw.update(changes)
    return spec_from_dict(raw, source="est.yaml")


@pytest.mark.parametrize("changes", [
    {},
    # imagefolder (counted as ImageNet-1k) at another image size (one axis value and one arm:
    # every model is traced again at that size); synthetic data.
    {"base": {"model": {"backbone": "localvit_micro"},
              "data": {"name": "imagefolder", "root": "/nonexistent", "img_size": 32},
              "train": {"epochs": 2, "batch_size": 32, "ema": False}},
     "axes": {"model.locality.act": ["relu6"]},
     "arms": {"swin": {"model.backbone": "localvit_swin_micro", "model.locality": "default"}}},
    {"base": {"model": {"backbone": "localvit_micro"}, "data": {"name": "synthetic"},
              "train": {"epochs": 2, "batch_size": 32, "ema": False}}, "arms": {}},
])
def test_estimate_is_the_traced_count_of_every_model(changes):
    plan = build_plan(spec(**changes), source="est.yaml", data_required=False)
    est = estimate_plan(plan)
    trials, epochs, total, per_model, assumed = reference_estimate(plan)
    assert (est.trials, est.epochs_max, est.assumed_sizes) == (trials, epochs, assumed)
    assert est.train_macs == total  # exactly: same counts, summed in the same order
    assert est.macs_per_image == per_model


def test_large_factorial_traces_each_architecture_once(monkeypatch):
    counters = []

    class Spy(profile.MacCounter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            counters.append(self)

    monkeypatch.setattr(profile, "MacCounter", Spy)
    axes = {"model.locality.act": ["relu6", "hs", "hs+se", "hs+eca"],
            "model.locality.layers": ["1-2", "3-4", "all"],
            "model.locality.expansion": [1, 2, 4],
            "model.locality.dw_conv": [True, False]}
    plan = build_plan(spec(axes=axes, arms={}, seeds=list(range(10))), source="est.yaml",
                      data_required=False)
    assert len(plan.arms) == 1 + 4 * 3 * 3 * 2 and plan.num_trials == 730
    est = estimate_plan(plan)
    (counter,) = counters
    # vit_micro, and localvit_micro with the FFN in blocks 1-2, 3-4 or all: four whole traces;
    # the 72 knob sets cost one trace of each distinct FFN (4 x 3 x 2 here, the same place in
    # every block).
    assert counter.traced_models == 4 and counter.traced_ffns == 24
    assert est.trials == 730


def _dry_run_text(plan, width):
    import io

    from rich.console import Console

    from orchestrator.sweep import _print_plan

    out = io.StringIO()
    _print_plan(plan, Console(file=out, width=width, highlight=False))
    return out.getvalue()


def test_dry_run_table_never_cuts_an_arm_name_at_80_columns():
    # A backbone axis (arms named after the backbones: localvit_swin_micro), an alias and a
    # factorial's long names: every name is shown whole where it fits, folded (never cut with
    # "…") where not.
    backbones = ["vit_micro", "localvit_micro", "localvit_swin_micro", "localvit_pvt_micro",
                 "localvit_tnt_micro"]
    plan = build_plan(spec(design="ofat", axes={"model.backbone": backbones}, arms={
        "act=relu6,layers=1-2,expansion=4,dw_conv=false,a_long_named_control": {
            "model.locality": {"act": "relu6", "layers": "1-2", "dw_conv": False}}}),
        source="est.yaml", data_required=False)
    text = _dry_run_text(plan, 80)
    table = text.split("\narms: ")[0]
    assert "…" not in text
    rows = table.splitlines()[1:]  # under the title, every line of the table ends in its rule
    assert all(len(line) <= 80 and line.rstrip()[-1] in "┓┃┩│┘" for line in rows), table
    for arm in plan.arms:
        for name in (arm.name, *arm.shown_aliases):
            assert name in table or len(name) > 35, name
    assert "backbone=" not in table     # a backbone-named arm's key=value spelling: not shown
    # Folded, the long name is all there, read down its column.
    column = ["".join(line.split("│")[i].strip() for line in rows if line.startswith("│"))
              for i in (1, 3)]
    assert "act=relu6,layers=1-2,expansion=4,dw_conv=false,a_long_named_control" in column[0]
    # The backbone is its own column; the other overrides are spelled as --set keys.
    row = next(line for line in rows if "│ localvit_swin_micro " in line)
    assert row.count("localvit_swin_micro") == 2 and "model.backbone" not in table
    assert "model.locality=none" in column[1] and "model.locality.dw_conv=false" in column[1]
