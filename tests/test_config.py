"""TrainConfig: one schema for CLI, spec base and arms; errors name the key path."""

import pickle

import pytest

from trainers.config import (
    ConfigError,
    apply_overrides,
    parse_set_args,
    train_config_from_dict,
)


def test_the_deit_recipe_is_the_papers():
    cfg = train_config_from_dict({"recipe": "deit"})
    assert cfg.train.epochs == 300 and cfg.train.batch_size == 1024
    assert cfg.effective_lr == pytest.approx(5e-4 * 1024 / 512)
    assert cfg.aug.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.aug.label_smoothing == 0.1
    assert cfg.aug.mixup == 0.8 and cfg.aug.cutmix == 1.0 and cfg.train.ema_decay == 0.99996


def test_round_trip_and_pickle():
    cfg = train_config_from_dict({"model": {"backbone": "deit_tiny", "locality": {"act": "hs"}}})
    assert train_config_from_dict(cfg.to_dict()) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert train_config_from_dict({"model": {"locality": None}}).model.locality is None


@pytest.mark.parametrize("data,needle", [
    ({"modle": {}}, "modle: unknown key; did you mean 'model'?"),
    ({"train": {"lrr": 1e-3}}, "train.lrr: unknown key; did you mean 'lr'?"),
    ({"model": {"locality": {"act": "gelu6"}}}, "model.locality.act: Input should be 'relu6'"),
    ({"train": {"batch_size": 0}}, "train.batch_size: Input should be greater than 0"),
    ({"data": {"name": "imagenet1k"}}, "data.name: Input should be 'digits'"),
])
def test_errors_name_the_key_path(data, needle):
    with pytest.raises(ConfigError) as err:
        train_config_from_dict(data, source="spec.yaml")
    assert str(err.value).startswith("spec.yaml: ")
    assert needle in str(err.value)


def test_mapping_errors_hide_the_union_noise():
    with pytest.raises(ConfigError) as err:
        train_config_from_dict({"model": {"locality": {"act": "gelu6"}}})
    assert "'default'" not in str(err.value)


def test_apply_overrides_merges_mappings_and_replaces_scalars():
    base = {"model": {"backbone": "deit_tiny", "locality": {"act": "hs", "expansion": 4}}}
    out = apply_overrides(base, {"model.locality": {"expansion": 2, "reduction": 96},
                                 "train.lr": 1e-3})
    assert out["model"]["locality"] == {"act": "hs", "expansion": 2, "reduction": 96}
    assert out["train"]["lr"] == 1e-3
    assert apply_overrides(base, {"model.locality": None})["model"]["locality"] is None
    assert base["model"]["locality"]["expansion"] == 4  # input untouched


def test_parse_set_args():
    assert parse_set_args(["train.lr=1e-3", "model.locality.layers=[1, 2]", "aug.mixup=0",
                           "train.ema=false", "model.backbone=deit_tiny"]) == {
        "train.lr": 1e-3, "model.locality.layers": [1, 2], "aug.mixup": 0,
        "train.ema": False, "model.backbone": "deit_tiny"}
    for bad in ["train.lr", "=3", "a..b=1", "x=[1,"]:
        with pytest.raises(ConfigError, match="--set"):
            parse_set_args([bad])
