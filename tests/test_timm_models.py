"""Every registered model as a timm model: its pretrained config and data config, timm's keywords,
forward / backward through timm.create_model, the head interface, intermediates and
features_only, TorchScript and torch.fx.

The same ground as timm's own model tests (`../shared/timm_peer/run.sh` runs those unchanged),
written for this project: the micro variants run every check; the 224-px paper models check
their configs and, marked slow, their feature extraction. Also marked slow: timm's data pipeline
and optimizer train a micro LocalViT on an ImageFolder of digits.
"""

import math

import pytest
import timm
import torch
from timm.data import resolve_data_config
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules

from trainers import registry
from trainers.config import ModelConfigError

NAMES = registry.list_models()
SMALL = [n for n in NAMES if registry.default_img_size(n) <= 32]
PAPER = [n for n in NAMES if n not in SMALL]
HIERARCHICAL = [n for n in NAMES if registry.family(n) in ("pvt", "swin")]
SPATIAL = ("pvt", "swin")  # forward_features is a spatial map (timm's "standard" models)


def _input(name, batch=2, chans=3):
    size = registry.default_img_size(name)
    return torch.randn(batch, chans, size, size)


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_config_of_every_name(name):
    cfg = timm.models.get_pretrained_cfg(name)
    size = registry.default_img_size(name)
    assert cfg is not None and cfg.architecture == name
    assert cfg.input_size == (3, size, size) and cfg.fixed_input_size
    assert cfg.num_classes == 1000 and cfg.interpolation == "bicubic"
    assert cfg.crop_pct == (0.875 if size == 224 else 1.0)
    assert "arXiv:2104.05707" in cfg.paper_ids
    assert not cfg.has_weights
    assert (cfg.pool_size is not None) == (registry.family(name) in SPATIAL)


@pytest.mark.parametrize("name", SMALL)
def test_data_config_and_config_names_match_the_model(name):
    model = timm.create_model(name)
    assert model.pretrained_cfg is model.default_cfg
    data = resolve_data_config(model=model)
    size = registry.default_img_size(name)
    assert data["input_size"] == (3, size, size) and data["crop_pct"] == 1.0
    state = model.state_dict()
    assert model.default_cfg["first_conv"] + ".weight" in state
    assert model.default_cfg["classifier"] + ".weight" in state
    if registry.family(name) in SPATIAL:
        features = model.forward_features(_input(name, 1))
        spatial = (1, 2) if getattr(model, "output_fmt", "NCHW") == "NHWC" else (2, 3)
        assert tuple(features.shape[i] for i in spatial) == model.default_cfg["pool_size"]


@pytest.mark.parametrize("name", SMALL)
def test_timm_keywords_reach_the_model(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, in_chans=1, drop_rate=0.25,
                              drop_path_rate=0.1, global_pool="avg")
    drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert 0.25 in drops, "drop_rate did not reach the head"
    model.eval()
    assert model(_input(name, chans=1)).shape == (2, 7)


def test_architecture_overrides_still_checked_through_timm():
    assert len(timm.create_model("vit_micro", depth=2).blocks) == 2
    with pytest.raises(ModelConfigError, match=r"'drop_rte' \(did you mean 'drop_rate'\?\)"):
        timm.create_model("vit_micro", drop_rte=0.1)
    with pytest.raises(ModelConfigError, match="global_pool 'map2'.*'token', 'avg'"):
        timm.create_model("pvt_micro", global_pool="map2")
    with pytest.raises(ModelConfigError, match=r"drop_rate must be a number in \[0, 1\)"):
        timm.create_model("localvit_micro", drop_rate=1.5)
    with pytest.raises(ModelConfigError, match="valid models"):
        registry.create_model("localvit_micr")


@pytest.mark.parametrize("name", SMALL)
def test_forward_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=42).train()
    out = model(_input(name))
    assert out.shape == (2, 42) and torch.isfinite(out).all()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"


@pytest.mark.parametrize("name", SMALL)
def test_head_interface(name):
    model = timm.create_model(name, num_classes=10).eval()
    x = _input(name)
    with torch.no_grad():
        features = model.forward_features(x)
        pre = model.forward_head(features, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        assert torch.equal(model.forward_head(features), model.get_classifier()(pre))
        model.reset_classifier(0)
        assert model.num_classes == 0 and torch.equal(model(x), pre)
        unpooled = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == features.shape


@pytest.mark.parametrize("name", SMALL)
def test_forward_intermediates_match_feature_info(name):
    model = timm.create_model(name).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    assert len(info.channels()) >= 3
    x = _input(name, 1)
    size = x.shape[-1]
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x))
        assert len(maps) == len(info.channels())
        for chans, reduction, fmap in zip(info.channels(), info.reduction(), maps, strict=True):
            assert fmap.shape[:2] == (1, chans)
            assert max(fmap.shape[2:]) <= math.ceil(size / reduction) + 1
        assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2


@pytest.mark.parametrize("name", [n for n in HIERARCHICAL if n in SMALL]
                         + [pytest.param(n, marks=pytest.mark.slow)
                            for n in HIERARCHICAL if n in PAPER])
def test_features_only_channels_match_outputs(name):
    model = timm.create_model(name, features_only=True).eval()
    channels = model.feature_info.channels()
    assert len(channels) >= 3
    with torch.no_grad():
        outputs = model(_input(name, 1))
    channel_axis = 3 if getattr(model, "output_fmt", "NCHW") == "NHWC" else 1
    assert [o.shape[channel_axis] for o in outputs] == channels
    picked = timm.create_model(name, features_only=True, out_indices=(1, 2)).eval()
    with torch.no_grad():
        assert [o.shape[channel_axis] for o in picked(_input(name, 1))] == channels[1:3]


@pytest.mark.parametrize("name", [n for n in SMALL if n not in HIERARCHICAL])
def test_features_only_of_the_vit_like_models(name):
    model = timm.create_model(name, features_only=True).eval()
    with torch.no_grad():
        outputs = model(_input(name, 1))
    assert len(outputs) == 3  # the last three blocks, as timm's ViTs
    assert [o.shape[1] for o in outputs] == model.feature_info.channels()


@pytest.mark.parametrize("name", SMALL)
def test_torchscript(name):
    model = timm.create_model(name, num_classes=10).eval()
    scripted = torch.jit.script(model)
    x = _input(name)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def _fx(model):
    from torchvision.models.feature_extraction import (
        create_feature_extractor,
        get_graph_node_names,
    )

    kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                    eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=kwargs)


@pytest.mark.parametrize("name", SMALL)
def test_fx_trace_forward_and_backward(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    x = _input(name)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(next(iter(_fx(model)(x).values())), expected)
    traced = _fx(model.train())
    next(iter(traced(x).values())).mean().backward()
    assert all(p.grad is not None for p in traced.parameters())


@pytest.mark.parametrize("name", ["pvt_micro", "t2t_vit_micro"])
def test_wrong_input_size_is_a_clear_error(name):
    model = timm.create_model(name)
    with pytest.raises(ValueError, match="build it with the input's img_size"):
        model(torch.randn(1, 3, 48, 48))


def _digits_image_folder(root):
    """scikit-learn's 8x8 digits as PNG files in an ImageFolder tree (train/, val/ by class)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for i, (image, label) in enumerate(zip(images, digits.target, strict=True)):
        split = "val" if i % 5 == 0 else "train"
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).convert("RGB").save(folder / f"{i}.png")


@pytest.mark.slow
def test_timm_data_pipeline_and_optimizer_train_a_micro_localvit(tmp_path):
    """timm's training pieces as a user strings them together after `import trainers`: the data
    config read from the model, timm's dataset / loader / transforms on an ImageFolder of digits
    (8 px images resized to the model's 16 px), timm's optimizer; the model learns."""
    from timm.data import create_dataset, create_loader
    from timm.optim import create_optimizer_v2

    _digits_image_folder(tmp_path)
    torch.manual_seed(0)
    model = timm.create_model("localvit_micro", num_classes=10, drop_rate=0.0)
    data = resolve_data_config(model=model)
    assert data["input_size"] == (3, 16, 16)

    def loader(split, training):
        dataset = create_dataset("", root=str(tmp_path), split=split, is_training=training)
        return create_loader(dataset, input_size=data["input_size"], batch_size=64,
                             is_training=training, no_aug=True, use_prefetcher=False,
                             interpolation=data["interpolation"], mean=data["mean"],
                             std=data["std"], crop_pct=data["crop_pct"], num_workers=0)

    train, val = loader("train", True), loader("val", False)
    optimizer = create_optimizer_v2(model, "adamw", lr=3e-3, weight_decay=0.05)

    def accuracy():
        model.eval()
        with torch.no_grad():
            hits = sum((model(x).argmax(1) == y).sum().item() for x, y in val)
        return hits / len(val.dataset)

    before = accuracy()
    for _ in range(2):             # 0.12 before, 0.97 after two epochs (seed 0, one thread)
        model.train()
        for x, y in train:
            assert x.shape[1:] == (3, 16, 16)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    after = accuracy()
    assert after > max(0.5, before + 0.3), (before, after)
