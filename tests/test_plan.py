"""Plans: arms x seeds with stable keys, aliases for identical configs, every trial validated
against the real registry and trainer before launch, and --smoke keeping the design."""

import pickle
from pathlib import Path

import pytest

from orchestrator.errors import PlanError
from orchestrator.plan import build_plan, resolve_sample, trial_key
from orchestrator.spec import load_spec, spec_from_dict
from orchestrator.spec.smoke import SMOKE_EPOCHS, SMOKE_STEPS_PER_EPOCH, shrink_config, shrink_spec
from trainers.config import TrainConfig

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


def small_spec(**changes):
    raw = {
        "name": "t",
        "base": {"model": {"backbone": "localvit_micro"}, "data": {"name": "digits"},
                 "train": {"epochs": 2, "batch_size": 32, "ema": False}},
        "baseline": {"model.backbone": "vit_micro"},
        "axes": {"model.locality.act": ["relu6", "hs"]},
        "seeds": [0, 1],
    }
    raw.update(changes)
    return spec_from_dict(raw, source="t.yaml")


def test_arms_times_seeds_seed_major_with_unique_stable_keys():
    plan = build_plan(small_spec(), source="t.yaml")
    assert [a.name for a in plan.arms] == ["baseline", "base", "act=relu6", "act=hs"]
    assert [(t.arm, t.seed) for t in plan.trials][:4] == [
        ("baseline", 0), ("base", 0), ("act=relu6", 0), ("act=hs", 0)]
    assert len(plan.trials) == 8 == plan.num_trials
    keys = [t.key for t in plan.trials]
    assert len(set(keys)) == 8 and all(len(k) == 12 for k in keys)
    again = build_plan(small_spec(), source="t.yaml")
    assert [t.key for t in again.trials] == keys
    assert all(t.config.seed == t.seed for t in plan.trials)
    assert pickle.loads(pickle.dumps(plan.trials)) == plan.trials


def test_trial_key_ignores_execution_settings_only():
    cfg = build_plan(small_spec(), source="t.yaml").trials[0].config.to_dict()
    assert trial_key({**cfg, "threads": 7}) == trial_key(cfg)
    assert trial_key({**cfg, "seed": 99}) != trial_key(cfg)
    assert trial_key({**cfg, "train": {**cfg["train"], "lr": 0.5}}) != trial_key(cfg)


def test_trial_keys_of_a_plan_are_trial_key_of_each_config():
    # build_plan serialises each arm's config once for all its seeds (_seed_keys); the keys must
    # stay those of trial_key, or --resume and the Parquet tables lose their trials.
    spec = small_spec(seeds=[0, 1, 7, 12, 2**32 - 1], base={
        "model": {"backbone": "localvit_micro", "arch": {"mlp_ratio": 2.5}},
        "data": {"name": "digits", "num_workers": 3}, "threads": 2,
        "train": {"epochs": 2, "batch_size": 32, "ema": False}})
    plan = build_plan(spec, source="t.yaml")
    assert [t.key for t in plan.trials] == [trial_key(t.config) for t in plan.trials]
    assert len({t.key for t in plan.trials}) == len(plan.trials) == 4 * 5


def test_format_overrides_spells_dotted_keys_like_arm_names():
    from orchestrator.plan import format_overrides

    assert format_overrides({"model.locality": {"expansion": 2, "dw_conv": False},
                             "model.arch": {"mlp_ratio": 6.0}, "model.backbone": "deit_tiny",
                             "model.locality.layers": [1, 4], "aug.auto_augment": None}) == [
        "model.locality.expansion=2", "model.locality.dw_conv=false", "model.arch.mlp_ratio=6",
        "model.backbone=deit_tiny", "model.locality.layers=[1,4]", "aug.auto_augment=none"]


def test_identical_configs_run_once_under_the_first_name():
    plan = build_plan(small_spec(baseline={}), source="t.yaml")
    assert plan.arms[0].name == "baseline" and plan.arms[0].aliases == ("base",)
    assert len(plan.trials) == 3 * 2
    assert {t.aliases for t in plan.trials if t.arm == "baseline"} == {("base",)}


def test_ablation_plan_is_the_papers_design():
    plan = build_plan(load_spec(SPACES / "ablation.yaml"), source="ablation.yaml",
                      data_required=False)
    names = [a.name for a in plan.arms]
    assert names[:2] == ["baseline", "localvit_t"]
    for arm in ("act=relu6", "act=hs+ecah", "reduction=4", "layers=1-4", "layers=9-12",
                "expansion=1,reduction=48", "gamma=6,act=relu6", "deit_tiny,mlp_ratio=6",
                "no-dwconv"):
        assert arm in names
    # axis values equal to the centre point are the centre point, not extra trials
    centre = plan.arms[1]
    assert {"act=hs+se", "reduction=192", "layers=all", "expansion=4,reduction=192"} \
        == set(centre.aliases)
    assert len(plan.arms) == 19 and len(plan.trials) == 57
    assert plan.warnings and "data.root" in plan.warnings[0]
    base = next(t for t in plan.trials if t.arm == "baseline")
    assert base.backbone == "deit_tiny" and base.config.model.locality is None


def test_factorial_design_names_every_combination():
    spec = small_spec(design="factorial", baseline={},
                      axes={"model.locality.act": ["relu6", "hs"],
                            "model.locality.layers": ["1-2", "all"]})
    plan = build_plan(spec, source="t.yaml")
    names = [a.name for a in plan.arms]
    assert "act=relu6,layers=1-2" in names and "act=hs,layers=all" in names
    assert len(names) == 5            # baseline (= base) + 4 combinations


@pytest.mark.parametrize("changes,needles", [
    ({"axes": {"model.locality.layers": ["1-4", "3-9"]}},
     ["t.yaml: axes.model.locality.layers[1]", "outside this model's 4 blocks"]),
    ({"baseline": {"model.backbone": "vit_mikro"}},
     ["t.yaml: baseline: model.backbone: unknown model 'vit_mikro'", "did you mean vit_micro"]),
    ({"arms": {"wide": {"model.arch": {"mlp_ratioo": 6}}}}, ["t.yaml: arms.wide", "mlp_ratioo"]),
    ({"search": {"metric": "val_ema/top1"}},
     ["t.yaml: search.metric: no trial of", "train.ema=false", "val/top1"]),
    ({"search": {"metric": "accuracy"}}, ["search.metric", "pick one of"]),
    ({"search": {"scheduler": {"asha": {"grace_period": 5}}}},
     ["search.scheduler.asha.grace_period: 5 is more than the 2 epochs"]),
])
def test_invalid_trials_are_caught_before_launch(changes, needles):
    with pytest.raises(PlanError) as err:
        build_plan(small_spec(**changes), source="t.yaml")
    for needle in needles:
        assert needle in str(err.value), str(err.value)


@pytest.mark.parametrize("changes,needles", [
    ({"axes": {"model.locality.act": ["relu6", "gelu"]}},
     ["t.yaml: axes.model.locality.act[1]: model.locality.act: Input should be 'relu6'",
      "but got 'gelu'"]),
    ({"axes": {"train.epochs": [3, 0]}}, ["axes.train.epochs[1]: train.epochs: Input should be "
                                          "greater than 0 but got 0"]),
    ({"arms": {"big": {"train.batch_size": "many"}}},
     ["t.yaml: arms.big.train.batch_size: train.batch_size: Input should be a valid integer"]),
    ({"baseline": {"train.lr": -1.0}}, ["t.yaml: baseline.train.lr: train.lr: Input should be"]),
])
def test_axis_and_arm_values_are_typed_at_the_spec_edge(changes, needles):
    # A value of the wrong type or out of its field's bounds is the spec's error, before any
    # plan: with the file, the key path and the index.
    from orchestrator.errors import SpecError

    with pytest.raises(SpecError) as err:
        small_spec(**changes)
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    # Partial sub-configs and backbone-dependent keys are checked merged into base, by the plan.
    small_spec(axes={"model.locality": [{"expansion": 2}, "none"], "model.arch.depth": [2]})


def test_missing_data_is_an_error_when_trials_run_here():
    spec = small_spec(base={"model": {"backbone": "localvit_micro"},
                            "data": {"name": "imagefolder", "root": "/nonexistent/imagenet"},
                            "train": {"epochs": 2, "batch_size": 32}})
    with pytest.raises(PlanError, match="baseline: data.root '/nonexistent/imagenet'"):
        build_plan(spec, source="t.yaml")
    assert build_plan(spec, source="t.yaml", data_required=False).warnings


def test_smoke_keeps_the_design_at_cpu_scale():
    spec = shrink_spec(load_spec(SPACES / "ablation.yaml"))
    plan = build_plan(spec, source="ablation.yaml", smoke=True)
    assert spec.seeds == [0] and spec.run.resources_per_trial.gpu == 0
    assert spec.search.asha.grace_period == 1
    by_arm = {t.arm: t.config.to_dict() for t in plan.trials}
    assert by_arm["baseline"]["model"]["backbone"] == "vit_micro"
    assert by_arm["layers=9-12"]["model"]["locality"]["layers"] == "3-4"
    assert by_arm["layers=1-4"]["model"]["locality"]["layers"] == "1-2"
    for cfg in by_arm.values():
        assert cfg["data"]["name"] == "digits" and cfg["device"] == "cpu"
        assert cfg["train"]["epochs"] == SMOKE_EPOCHS
        assert cfg["train"]["steps_per_epoch"] <= SMOKE_STEPS_PER_EPOCH
        # The digits recipe, not the ImageNet one the study's base resolved to.
        assert cfg["recipe"] == "digits_cpu" and cfg["train"]["batch_size"] <= 32
        assert cfg["aug"]["mixup"] == 0.0 and cfg["train"]["lr"] == 2e-3
    # the five placement arms stay five distinct trials
    layer_arms = [a for a in by_arm if a.startswith("layers=")]
    assert len({trial_key(by_arm[a]) for a in layer_arms}) == len(layer_arms) == 4
    again = TrainConfig.model_validate(shrink_config(by_arm["no-dwconv"]))
    assert again.to_dict() == by_arm["no-dwconv"]   # idempotent


def test_search_plan_resolves_samples_into_the_base():
    spec = shrink_spec(load_spec(SPACES / "hpo.yaml"))
    plan = build_plan(spec, source="hpo.yaml", smoke=True)
    assert plan.is_search and plan.trials == () and plan.num_trials == 4
    cfg = resolve_sample(plan.search_base, {"train.lr": 1e-3, "model.drop_path": 0.1})
    assert cfg.train.lr == 1e-3 and cfg.model.drop_path == 0.1
    assert cfg.model.backbone == "localvit_micro"
    # the plan's sampler also applies --smoke to every sample (a searched epoch count is capped)
    sampled = plan.sampler({"train.lr": 1e-3, "train.epochs": 300})
    assert sampled.train.epochs == SMOKE_EPOCHS and sampled.train.lr == 1e-3


def test_references_pair_each_arm_with_its_own_backbone_and_are_never_stopped():
    plan = build_plan(load_spec(SPACES / "backbones_cpu.yaml"), source="backbones_cpu.yaml")
    assert plan.references["localvit_pvt_micro"] == "pvt_micro"
    assert plan.references["localvit_swin_micro"] == "swin_micro"
    assert plan.references["localvit_micro"] == "baseline"
    assert plan.references["pvt_micro"] == "baseline" and "baseline" not in plan.references
    assert set(plan.protected) == {"baseline", "localvit_micro", "pvt_micro", "tnt_micro",
                                   "t2t_vit_micro", "swin_micro"}


def test_references_resolve_aliases_and_name_unknown_arms():
    # A baseline equal to base is one arm, "baseline", with the alias "base".
    plan = build_plan(small_spec(baseline={}, references={"act=relu6": "base",
                                                          "act=hs": "act=relu6"}),
                      source="t.yaml")
    assert plan.references == {"act=relu6": "baseline", "act=hs": "act=relu6"}
    assert set(plan.protected) == {"baseline", "act=relu6"}
    with pytest.raises(PlanError, match=r"t.yaml: references.act=relu6: no arm named 'bse'; "
                                        r"did you mean 'base'\?"):
        build_plan(small_spec(references={"act=relu6": "bse"}), source="t.yaml")
    with pytest.raises(PlanError, match="is not measured against another arm"):
        build_plan(small_spec(references={"baseline": "base"}), source="t.yaml")


@pytest.mark.parametrize("changes,unit", [
    ({}, "arm"),                                                  # designed, 2 seeds
    ({"seeds": [0]}, "trial"),                                    # one seed: nothing to pair
    ({"search": {"scheduler": {"asha": {"unit": "trial"}}}}, "trial"),
])
def test_early_stopping_unit_defaults_to_arms_for_designed_multi_seed_studies(changes, unit):
    raw = {"search": {"scheduler": {"asha": {"grace_period": 1}}}}
    raw.update(changes)
    if "search" in changes:
        raw["search"]["scheduler"]["asha"]["grace_period"] = 1
    assert small_spec(**raw).asha_unit == unit
    # --smoke keeps the study's unit although it cuts the seeds to one.
    assert shrink_spec(small_spec(**raw)).search.asha.unit == unit


class _Counting:
    """Stands in for TrainConfig's pydantic validator and counts the whole-config validations."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def validate_python(self, *args, **kwargs):
        self.calls += 1
        return self.inner.validate_python(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _worker_outside_tune(monkeypatch) -> list[int]:
    """The trainable run in this process as a fresh trial (no Tune session, no checkpoint, no
    trial resources); returns the list each reported epoch is appended to."""
    import ray.tune

    from orchestrator.tune import trainable

    reported: list[int] = []

    class Recording:
        def __init__(self, restored=None):
            assert restored is None                 # a fresh trial: no checkpoint history

        def report(self, metrics, *, epoch, checkpoint_dir):
            reported.append(epoch)

    monkeypatch.setattr(trainable, "TuneReporter", Recording)
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(trainable, "_trial_resources", lambda: None)
    return reported


def test_each_trial_config_is_validated_once_from_yaml_to_model(monkeypatch, tmp_path):
    """The schema and the trainer's checks run once per design point, from the spec to the
    worker: base when the spec is read (the plan starts from that config), every other point at
    planning (shared by the arm's seeds); the worker trains the planned config as it is."""
    import importlib

    from orchestrator.plan import checks as plan_checks
    from orchestrator.tune import trainable
    from trainers import registry

    train_mod = importlib.import_module("trainers.train")  # the package exports the function too

    schema = _Counting(TrainConfig.__pydantic_validator__)
    monkeypatch.setattr(TrainConfig, "__pydantic_validator__", schema)
    checks = []
    real_check = train_mod.validate_config

    def counted_check(cfg):
        checks.append(cfg)
        real_check(cfg)

    # The trainer's checks, wherever they are called from: the plan and the trainer itself.
    monkeypatch.setattr(train_mod, "validate_config", counted_check)
    monkeypatch.setattr(plan_checks, "validate_config", counted_check)
    # And within each, the model's config is resolved once (backbone, knobs, arch, image size).
    model_checks = []
    real_model_check = registry.check_model_config

    def counted_model_check(cfg, **kwargs):
        model_checks.append(cfg)
        real_model_check(cfg, **kwargs)

    monkeypatch.setattr(registry, "check_model_config", counted_model_check)

    spec = small_spec(base={"model": {"backbone": "localvit_micro"},
                            "data": {"name": "digits", "img_size": 16},
                            "train": {"epochs": 1, "batch_size": 32, "ema": False,
                                      "steps_per_epoch": 2}},
                      axes={"model.locality.act": ["hs"]})
    assert schema.calls == 1 and not checks             # base, as the spec is read
    plan = build_plan(spec, source="t.yaml")
    assert [a.name for a in plan.arms] == ["baseline", "base", "act=hs"]
    assert len(plan.trials) == 6
    assert schema.calls == 3 and len(checks) == 3      # one per arm, none per seed
    assert len(model_checks) == 3

    # The worker: the trial's config arrives by key, already checked, and is trained as it is.
    reported = _worker_outside_tune(monkeypatch)
    trial = plan.trials[-1]
    point = {"trial": {"key": trial.key, "arm": trial.arm, "seed": trial.seed, "epochs": 1,
                       "aliases": list(trial.aliases)}}
    trainable.run_trial(point, configs=plan.configs)
    assert reported == [1]
    assert schema.calls == 3 and len(checks) == 3      # the worker added none
    with pytest.raises(ValueError, match="not in the plan's configs"):
        trainable.run_trial(point, configs={})


def test_a_trial_removes_its_folder_and_those_of_dead_workers(monkeypatch, tmp_path):
    """A trial's checkpoints go to its own temporary folder, removed when it ends; a worker
    killed with its driver or node cannot remove its own, so the next trial on that machine
    removes the folders of worker processes that are gone, and nothing else."""
    import os
    import subprocess
    import sys
    import tempfile

    from orchestrator.tune import trainable

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    left = {name: tmp_path / name for name in (
        f"trial-0972b7dbdb23-{gone}-k7rsqkb1",        # a killed worker's: removed
        f"trial-0972b7dbdb23-{os.getppid()}-abc_12",  # a live process's: kept
        "trial-0972b7dbdb23-lhi6ubny",                # no pid in the name: kept
        "trial-notes")}                               # not a trial's: kept
    for folder in left.values():
        (folder / "checkpoint").mkdir(parents=True)

    spec = small_spec(base={"model": {"backbone": "vit_micro"},
                            "data": {"name": "digits", "img_size": 16},
                            "train": {"epochs": 1, "batch_size": 32, "ema": False,
                                      "steps_per_epoch": 2}})
    plan = build_plan(spec, source="t.yaml")
    reported = _worker_outside_tune(monkeypatch)
    trial = plan.trials[0]
    trainable.run_trial({"trial": {"key": trial.key, "arm": trial.arm, "seed": trial.seed,
                                   "epochs": 1, "aliases": list(trial.aliases)}},
                        configs=plan.configs)
    assert reported == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(list(left)[1:])

    folder = trainable._trial_folder(trial.key)
    assert folder.parent == tmp_path and folder.name.startswith(f"trial-{trial.key}-{os.getpid()}-")


def test_a_searched_trial_config_is_resolved_once_on_the_driver(monkeypatch, tmp_path):
    """A search's samples become TrainConfigs once each, on the driver, as the search algorithm
    hands Tune its trials (the real Optuna searcher behind Tune's SearchGenerator); the driver's
    callback (`identify`) and the worker read that config and check nothing again."""
    from ray.tune.experiment import Experiment

    from orchestrator.plan import model as plan_model
    from orchestrator.tune import trainable, tuner
    from orchestrator.tune.trial import RESOLVED_KEY, identify

    raw = {"name": "s", "seeds": [0],
           "base": {"model": {"backbone": "localvit_micro"},
                    "data": {"name": "digits", "img_size": 16},
                    "train": {"epochs": 1, "batch_size": 32, "ema": False, "steps_per_epoch": 2}},
           "search": {"metric": "val/top1", "mode": "max", "num_samples": 3,
                      "space": {"train.lr": {"loguniform": [1e-4, 1e-2]},
                                "model.drop_path": {"uniform": [0.0, 0.2]}},
                      "algorithm": {"optuna": {"sampler": "tpe", "seed": 0}}}}
    plan = build_plan(spec_from_dict(raw, source="s.yaml"), source="s.yaml")
    samples = []
    real_resolve = plan_model.resolve_sample

    def counted_resolve(base, sample):
        samples.append(dict(sample))
        return real_resolve(base, sample)

    monkeypatch.setattr(plan_model, "resolve_sample", counted_resolve)
    schema = _Counting(TrainConfig.__pydantic_validator__)
    monkeypatch.setattr(TrainConfig, "__pydantic_validator__", schema)

    # The driver: Tune's calls on the search algorithm, in Tune's order.
    space = tuner.param_space(plan)
    search = tuner._search_alg(plan)
    experiment = Experiment("s", trainable.run_trial, config=space, num_samples=3,
                            storage_path=str(tmp_path))
    assert search.set_search_properties("val/top1", "max", space, **experiment.public_spec)
    search.add_configurations([experiment])
    trials = list(iter(search.next_trial, None))
    assert len(trials) == len(samples) == schema.calls == 3     # one resolution per trial
    for trial, sample in zip(trials, samples, strict=True):
        cfg = trial.config[RESOLVED_KEY]
        assert {key: trial.config[key] for key in sample} == sample   # what Optuna proposed
        assert (cfg.train.lr, cfg.model.drop_path) == (sample["train.lr"],
                                                        sample["model.drop_path"])
    # The callback's view of each trial is that config.
    assert [identify(t.config).config for t in trials] == [t.config[RESOLVED_KEY] for t in trials]

    # The worker trains it as it is.
    reported = _worker_outside_tune(monkeypatch)
    trainable.run_trial(trials[0].config)
    assert reported == [1]
    assert len(samples) == schema.calls == 3                   # neither side added one
    # A sampled config that did not come through the driver's search is refused, not resolved.
    unresolved = {k: v for k, v in trials[0].config.items() if k != RESOLVED_KEY}
    with pytest.raises(ValueError, match="no resolved TrainConfig"):
        trainable.run_trial(unresolved)


def test_a_backbone_axis_names_its_arms_after_the_backbones():
    axes = {"model.backbone": ["localvit_micro", "pvt_micro", "localvit_pvt_micro"]}
    plan = build_plan(small_spec(axes=axes), source="t.yaml")
    names = {a.name: a.aliases for a in plan.arms}
    # localvit_micro is base: its point is an alias of the base arm, under both spellings.
    assert names == {"baseline": (), "base": ("localvit_micro", "backbone=localvit_micro"),
                     "pvt_micro": ("backbone=pvt_micro",),
                     "localvit_pvt_micro": ("backbone=localvit_pvt_micro",)}
    # A spec's own arm of that name keeps it; the axis value is then spelled key=value.
    plan = build_plan(small_spec(axes=axes, arms={"pvt_micro": {"train.lr": 1e-3}}),
                      source="t.yaml")
    assert "backbone=pvt_micro" in [a.name for a in plan.arms]
    assert plan.references["backbone=pvt_micro"] == "baseline"
    factorial = build_plan(small_spec(design="factorial", axes={
        "model.backbone": ["localvit_micro", "localvit_pvt_micro"],
        "model.locality.act": ["relu6", "hs"]}), source="t.yaml")
    assert "localvit_pvt_micro,act=relu6" in [a.name for a in factorial.arms]
    arm = next(a for a in factorial.arms if a.name == "localvit_pvt_micro,act=relu6")
    assert arm.aliases == ("backbone=localvit_pvt_micro,act=relu6",)


@pytest.mark.parametrize(("run", "cores", "cpus"), [
    ({}, 8, 8),                                                       # no cap: the machine
    ({"max_concurrent": 1}, 8, 1),                                    # one slot: one worker
    ({"max_concurrent": 2, "resources_per_trial": {"cpu": 3}}, 8, 6),
    ({"max_concurrent": 3, "resources_per_trial": {"cpu": 0.5}}, 8, 2),   # rounded up
    ({"max_concurrent": 4, "resources_per_trial": {"cpu": 4}}, 8, 8),     # at most the machine
    ({"max_concurrent": 4, "resources_per_trial": {"cpu": 1, "gpu": 0.25}}, 8, 4),
])
def test_a_sweeps_own_ray_gets_the_cpus_its_slots_use(monkeypatch, run, cores, cpus):
    # Ray starts (and preloads) one worker per CPU it is given: a sweep that runs one trial at a
    # time on an 8-core machine needs one, not eight.
    from orchestrator.tune import runner

    monkeypatch.setattr(runner.os, "cpu_count", lambda: cores)
    plan = build_plan(small_spec(run=run), source="t.yaml")
    assert runner.local_cpus(plan) == cpus
