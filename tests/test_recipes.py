"""Recipes: named presets under the explicit values, chosen by the data, resolved into the config
(so trial keys and config.yaml say what ran), moved between recipes by --smoke, and the trainer
CLI that picks, prints and records them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainers._mapping import flatten
from trainers._yaml import load_yaml
from trainers.config import (
    DATASETS,
    ConfigError,
    TrainConfig,
    _field_default,
    switch_recipe,
    train_config_from_dict,
)
from trainers.recipes import RECIPE_FOR_DATA, RECIPES

ROOT = Path(__file__).resolve().parents[1]


def test_every_dataset_has_a_recipe_and_every_recipe_says_what_it_is():
    assert set(RECIPE_FOR_DATA) == set(DATASETS)
    assert set(RECIPE_FOR_DATA.values()) <= set(RECIPES)
    for recipe in RECIPES.values():
        assert len(recipe.summary) > 40
        train_config_from_dict({"recipe": recipe.name})  # every value passes the schema


def test_the_field_defaults_are_the_deit_recipe():
    for dotted, value in flatten(RECIPES["deit"].values).items():
        key = tuple(dotted.split("."))
        if key == ("model", "drop_path"):  # None: the variant's own, 0.1 for the paper's models
            assert _field_default(key) is None
            continue
        assert _field_default(key) == value, key


def test_the_deit_recipe_is_reference_section_6():
    cfg = train_config_from_dict({"recipe": "deit"})
    t, a = cfg.train, cfg.aug
    assert (t.epochs, t.batch_size, t.opt, t.weight_decay, t.opt_eps) == (300, 1024, "adamw",
                                                                         0.05, 1e-8)
    assert cfg.effective_lr == pytest.approx(5e-4 * 1024 / 512)
    assert (t.sched, t.min_lr, t.warmup_epochs, t.warmup_lr) == ("cosine", 1e-5, 5, 1e-6)
    assert (t.ema, t.ema_decay, t.amp, cfg.model.drop_path) == (True, 0.99996, True, 0.1)
    assert (a.auto_augment, a.color_jitter, a.reprob, a.interpolation) == (
        "rand-m9-mstd0.5-inc1", 0.4, 0.25, "bicubic")
    assert (a.mixup, a.cutmix, a.mixup_switch_prob, a.label_smoothing) == (0.8, 1.0, 0.5, 0.1)
    assert a.crop_pct == 0.875  # resize to 256/224 of the size, centre crop


@pytest.mark.parametrize("data,recipe", [("digits", "digits_cpu"), ("synthetic", "digits_cpu"),
                                         ("imagefolder", "deit"), ("cifar10", "cifar"),
                                         ("cifar100", "cifar")])
def test_auto_takes_the_recipe_of_the_data(data, recipe):
    cfg = train_config_from_dict({"data": {"name": data}})
    assert cfg.recipe == recipe
    assert cfg.train.epochs == RECIPES[recipe].values["train"]["epochs"]
    assert TrainConfig().recipe == "digits_cpu"  # the default data is digits


def test_explicit_values_win_and_the_resolved_config_is_stable():
    cfg = train_config_from_dict({"data": {"name": "digits"},
                                  "train": {"epochs": 3, "lr": None}, "threads": None})
    assert cfg.recipe == "digits_cpu"
    assert (cfg.train.epochs, cfg.train.lr, cfg.threads) == (3, None, None)  # explicit, null too
    assert cfg.train.batch_size == 64 and cfg.aug.mixup == 0.0            # the recipe's
    resolved = cfg.to_dict()
    assert resolved["recipe"] == "digits_cpu" and resolved["model"]["drop_path"] == 0.0
    assert train_config_from_dict(resolved) == cfg
    # Another recipe under the same explicit values.
    deit = train_config_from_dict({"recipe": "deit", "train": {"epochs": 3}})
    assert (deit.train.epochs, deit.train.batch_size, deit.aug.mixup) == (3, 1024, 0.8)


def test_unknown_recipe_names_the_key_and_the_near_match():
    with pytest.raises(ConfigError) as err:
        train_config_from_dict({"recipe": "digit_cpu"}, source="spec.yaml")
    msg = str(err.value)
    assert msg.startswith("spec.yaml: recipe: must be one of auto, deit, digits_cpu, cifar")
    assert "did you mean 'digits_cpu'?" in msg


def test_switch_recipe_moves_recipe_values_and_keeps_chosen_ones():
    imagenet = train_config_from_dict({
        "data": {"name": "imagefolder", "root": "/data/in1k"},
        "train": {"epochs": 300, "batch_size": 1024, "lr": 1e-3}}).to_dict()
    assert imagenet["recipe"] == "deit"
    moved = switch_recipe(imagenet, "digits_cpu")
    assert moved["recipe"] == "digits_cpu"
    assert moved["train"]["lr"] == 1e-3                                  # chosen: kept
    assert moved["train"]["batch_size"] == 64 and moved["train"]["epochs"] == 15
    assert moved["aug"]["mixup"] == 0.0 and moved["aug"]["auto_augment"] is None
    assert moved["train"]["ema"] is False and moved["model"]["drop_path"] == 0.0
    assert moved["data"] == imagenet["data"]                             # not a recipe's key
    assert switch_recipe(moved, "digits_cpu") == moved                   # idempotent
    train_config_from_dict(moved)


def test_the_digits_config_file_is_the_default_digits_run():
    from_file = train_config_from_dict(load_yaml((ROOT / "configs/digits_cpu.yaml").read_text()))
    assert from_file == train_config_from_dict({"data": {"name": "digits"}})


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "trainers.train",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.system
def test_cli_picks_prints_and_records_the_recipe_with_provenance(tmp_path):
    out = tmp_path / "run"
    proc = _cli("--model", "localvit_micro", "--data", "digits", "--epochs", "1",
                "--set", "train.steps_per_epoch=2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "recipe digits_cpu (fits data digits; --recipe chooses another" in proc.stdout
    text = (out / "config.yaml").read_text()
    assert "# git commit: " in text and "# versions: python " in text and "timm 1." in text
    saved = load_yaml(text)
    assert saved["recipe"] == "digits_cpu" and saved["train"]["batch_size"] == 64
    assert saved["train"]["epochs"] == 1


@pytest.mark.system
def test_cli_reads_yaml_strictly_and_rejects_a_bad_recipe(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  lr: 1e-3\n  lr: 2e-3\n")
    proc = _cli("--config", str(dup), "--out", str(tmp_path / "a"))
    assert proc.returncode == 2 and "duplicate key 'lr'" in proc.stderr, proc.stderr
    proc = _cli("--data", "digits", "--recipe", "digit", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "did you mean 'digits_cpu'" in proc.stderr, proc.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
