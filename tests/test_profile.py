"""Parameter and MAC counting (closed forms, attention and depth-wise convs included) and the
CLI."""

import json
import types

import pytest
import torch

from trainers import profile, registry


def vit_macs(depth, dim, tokens, mlp_ratio, patch, classes, in_chans=3, prefix=1):
    """Closed-form MACs of a class-token ViT: every linear, conv and attention matmul."""
    n = tokens + prefix
    block = n * dim * 3 * dim + 2 * n * n * dim + n * dim * dim + 2 * n * dim * mlp_ratio * dim
    return tokens * dim * in_chans * patch * patch + depth * block + dim * classes


def locality_extra_macs(depth, dim, tokens, expansion, se_hidden):
    """What the locality FFN adds over the MLP: the 3x3 depth-wise conv and SE, minus the class
    token's MLP (the FFN skips prefix tokens)."""
    hidden = expansion * dim
    dw = tokens * hidden * 9
    se = 2 * hidden * se_hidden
    return depth * (dw + se - 2 * dim * hidden)


def test_count_params_is_all_parameters_and_the_fixed_tensors():
    model = registry.create_model("localvit_t2t_micro")
    fixed = model.pos_embed.numel() + sum(layer.random_features.numel()
                                          for layer in model.tokens_to_token.layers)
    assert fixed > 0
    assert profile.count_params(model) == sum(p.numel() for p in model.parameters()) + fixed
    assert profile.count_trainable_params(model) == profile.count_params(model) - fixed
    plain = registry.create_model("localvit_micro")  # no fixed tensors: exactly the parameters
    assert profile.count_params(plain) == sum(p.numel() for p in plain.parameters())


def test_deit_tiny_macs_closed_form_includes_attention():
    model = registry.create_model("deit_tiny")
    want = vit_macs(12, 192, 196, 4, 16, 1000)
    assert profile.count_macs(model, 224) == want
    assert abs(want / 1e9 - 1.26) < 0.01


def test_locality_adds_under_two_percent_macs_to_deit_tiny():
    base = profile.count_macs(registry.create_model("deit_tiny"), 224)
    local = profile.count_macs(registry.create_model("localvit_tiny"), 224)
    assert local - base == locality_extra_macs(12, 192, 196, 4, 4)
    assert 0 < (local - base) / base < 0.02


def test_micro_macs_closed_form_and_depthwise_counted():
    plain = profile.count_macs(registry.create_model("vit_micro"), 16)
    local = profile.count_macs(registry.create_model("localvit_micro"), 16)
    assert plain == vit_macs(4, 64, 16, 4, 4, 1000)
    assert local - plain == locality_extra_macs(4, 64, 16, 4, 4)


def test_count_macs_leaves_training_state_alone():
    model = registry.create_model("localvit_micro", img_size=(16, 24)).train()
    bn = model.blocks[0].ffn.conv[1]
    before = bn.running_mean.clone()
    profile.count_macs(model, (16, 24))
    assert model.training and torch.equal(bn.running_mean, before)


def test_images_per_s_is_the_batch_over_the_median_timed_step(monkeypatch):
    # A fake clock: the warm-up step takes 9 s and must not count; the timed steps take 0.5,
    # 0.25 and 1 s, so the median step is 0.5 s and 4 images per step make 8 images/s.
    clock, durations, calls = [0.0], iter([9.0, 0.5, 0.25, 1.0]), []

    def fake_step():
        calls.append(1)
        clock[0] += next(durations)

    monkeypatch.setattr(profile, "make_train_step", lambda *args, **kwargs: fake_step)
    monkeypatch.setattr(profile, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    ips = profile.measure_images_per_s(registry.create_model("vit_micro"), 16, batch_size=4,
                                       steps=3, warmup=1)
    assert ips == 8.0 and len(calls) == 4


def test_train_step_runs_forward_backward_and_the_optimizer():
    model = registry.create_model("vit_micro", num_classes=10)
    before = model.head.weight.detach().clone()
    step = profile.make_train_step(model, 16, 4, num_classes=10,
                                   optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    step()
    assert model.training and not torch.equal(model.head.weight, before)
    assert all(p.grad is None for p in model.parameters())  # gradients cleared for the next step


def test_cli_json(capsys):
    code = profile.main(["localvit_micro", "vit_micro", "--json", "--no-speed",
                         "--set", "locality.act=relu6", "--set", "locality.layers=1-2"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["model"] for r in lines] == ["localvit_micro", "vit_micro"]
    for rec in lines:
        # The --set knobs reach the model that is counted.
        model = registry.create_model(rec["model"], locality={"act": "relu6", "layers": "1-2"})
        assert rec["params"] == sum(p.numel() for p in model.parameters())
        assert rec["macs"] == profile.count_macs(model, 16)
        assert rec["locality"]["act"] == "relu6" and rec["locality"]["layers"] == "1-2"


def test_cli_table_shows_paper_figures(capsys):
    assert profile.main(["deit_tiny", "--no-speed"]) == 0
    out = capsys.readouterr().out
    assert "5,717,416" in out and "5.7 M" in out and "1.254 G" in out and "MACs" in out


@pytest.mark.parametrize("argv,pattern", [
    (["deit_tinny", "--no-speed"], "did you mean deit_tiny"),
    (["vit_micro", "--no-speed", "--set", "locality.act=gelu"], "relu6, hs"),
    (["vit_micro", "--no-speed", "--set", "train.lr=1"], "expected locality.KNOB"),
])
def test_cli_errors_exit_2(capsys, argv, pattern):
    assert profile.main(argv) == 2
    assert pattern in capsys.readouterr().err


# Locality overrides that build different locality FFNs; several share a layer set, so the
# counter reuses one whole-model trace for them and traces only their FFNs.
KNOBS = ["default", None, {"act": "relu6"}, {"act": "hs+eca", "dw_conv": False},
         {"act": "hs+ecah", "expansion": 2}, {"act": "hs+se", "expansion": 3, "reduction": 2},
         {"expansion": "mlp_ratio"}, {"layers": "1-2"}, {"layers": "1-2", "act": "hs"},
         {"layers": [1, 4], "dw_conv": False}]


def _layer_sets(backbone):
    from trainers.locality import resolve_layers

    depth = registry.depth(backbone)
    sets = set()
    for knobs in KNOBS:
        spec = registry.resolve_locality(backbone, knobs)
        sets.add(None if spec is None else resolve_layers(spec.layers, depth))
    return len(sets)


@pytest.mark.parametrize("backbone", ["localvit_micro", "vit_micro", "localvit_swin_micro",
                                      "swin_micro", "localvit_tnt_micro", "localvit_pvt_micro",
                                      "pvt_micro", "localvit_t2t_micro"])
def test_mac_counter_is_count_macs_of_the_built_model_exactly(backbone):
    from trainers.config import ModelConfig

    counter = profile.MacCounter(num_classes=10)
    img = registry.default_img_size(backbone)
    for knobs in KNOBS:
        cfg = ModelConfig(backbone=backbone, locality=knobs)
        model = registry.build_from_config(cfg, num_classes=10, img_size=img)
        assert counter.macs(cfg, img) == profile.count_macs(model, img), knobs
    if "t2t" in backbone:
        # The token layers' FFN has knobs of its own: every model is traced whole.
        assert counter.traced_models == len(KNOBS)
    else:
        assert counter.traced_models == _layer_sets(backbone) < len(KNOBS)
        assert counter.traced_ffns > 0


def test_mac_counter_on_the_paper_models():
    from trainers.config import ModelConfig

    counter = profile.MacCounter(num_classes=10)
    for backbone, knobs in [("deit_tiny", "default"), ("localvit_tiny", "default"),
                            ("localvit_tiny", {"act": "relu6", "expansion": 6}),
                            ("localvit_tiny", {"act": "hs+eca", "dw_conv": False}),
                            ("localvit_tiny", {"layers": "5-8", "reduction": 48})]:
        cfg = ModelConfig(backbone=backbone, locality=knobs)
        model = registry.build_from_config(cfg, num_classes=10, img_size=224)
        assert counter.macs(cfg, 224) == profile.count_macs(model, 224), (backbone, knobs)
    assert counter.traced_models == 3  # deit_tiny, localvit_tiny all blocks, blocks 5-8


def test_mac_counter_does_not_use_a_split_that_does_not_check_out(monkeypatch):
    from trainers.config import ModelConfig

    def wrong_place(call):  # a batch of 2: the FFN alone counts twice what it did in the model
        dim, ratio, shape, grid, prefix, device = place(call)
        return dim, ratio, (2, *shape[1:]), grid, prefix, device

    place = profile._ffn_place
    monkeypatch.setattr(profile, "_ffn_place", wrong_place)
    counter = profile.MacCounter(num_classes=10)
    for knobs in ({"act": "relu6"}, {"act": "hs"}, {"act": "hs+se"}):
        cfg = ModelConfig(backbone="localvit_micro", locality=knobs)
        model = registry.build_from_config(cfg, num_classes=10, img_size=16)
        assert counter.macs(cfg, 16) == profile.count_macs(model, 16)
    assert counter.traced_models == 3
