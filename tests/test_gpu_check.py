"""benchmarks/gpu_check.py's pieces, on CPU: the refusal without a GPU, the interleaved timing
loop, the trainer step it times, the micro sweep's spec, and the check of a finished sweep's
Parquet and MLflow records (on a real CPU sweep run by the same command the GPU check runs)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _gpu_sweep  # noqa: E402
import gpu_check  # noqa: E402

from orchestrator.sinks.parquet import read_trials  # noqa: E402
from orchestrator.spec import load_spec  # noqa: E402
from trainers.config import train_config_from_dict  # noqa: E402
from trainers.train import train  # noqa: E402


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@pytest.mark.system
def test_refuses_without_a_gpu_before_any_work(tmp_path):
    out_json, storage = tmp_path / "out.json", tmp_path / "storage"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--json", str(out_json),
         "--storage", str(storage)],
        cwd=tmp_path, env=_env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "no CUDA GPU is visible" in lines[0] and "it needs an NVIDIA GPU" in lines[0]
    assert "CUDA_VISIBLE_DEVICES ''" in lines[0]
    assert proc.stdout == ""
    assert not out_json.exists() and not storage.exists()


def test_bad_arguments_are_refused_as_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--settings", "eager,fast"])
    assert exc.value.code == 2 and "--settings: unknown fast" in capsys.readouterr().err
    (tmp_path / "gpu_check").mkdir()        # an earlier check's sweep: the sweep would refuse
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--storage", str(tmp_path)])
    assert exc.value.code == 2 and "exists (an earlier check)" in capsys.readouterr().err


def test_interleave_alternates_times_only_the_rounds_and_synchronizes_around_each():
    calls: list[str] = []
    syncs: list[int] = []

    def step_a():
        # The first (warm-up) call is slow, like a first CUDA step or a compilation.
        time.sleep(0.3 if not calls.count("a") else 0.005)
        calls.append("a")

    def step_b():
        time.sleep(0.05)
        calls.append("b")

    r = gpu_check.interleave(("A", step_a), ("B", step_b), rounds=4, warmup=1, batch=8,
                             synchronize=lambda: syncs.append(len(calls)))
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
    # One synchronize before and one after each timed step, none around the warm-up.
    assert syncs == [2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10]
    assert len(r["a_times_s"]) == len(r["b_times_s"]) == 4
    assert max(r["a_times_s"]) < 0.25                     # the warm-up step is not timed
    assert min(r["b_times_s"]) >= 0.05
    assert r["a_min_s"] == min(r["a_times_s"]) <= r["a_median_s"]
    assert r["ratio_min"] == pytest.approx(r["b_min_s"] / r["a_min_s"])
    assert r["ratio_min"] > 1.0 and r["ratio_median"] > 1.0
    assert r["b_images_per_s"] == pytest.approx(8 / r["b_min_s"])


@pytest.mark.parametrize("setting", ["eager", "channels_last"])
def test_trainer_step_trains_the_registered_model(setting):
    device = torch.device("cpu")
    model = gpu_check.prepare_model("localvit_micro", setting, img_size=16, device=device)
    if setting == "channels_last":
        convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    before = [p.detach().clone() for p in model.parameters()]
    step = gpu_check.trainer_step(model, batch=4, img_size=16, device=device, amp=True,
                                  channels_last=setting == "channels_last", num_classes=1000)
    step()
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert changed > len(before) // 2                     # an optimizer step, not a forward


def test_compare_times_both_registered_models_on_cpu():
    r = gpu_check.compare("eager", batch=4, img_size=16, rounds=2, warmup=1,
                          device=torch.device("cpu"), pair=("vit_micro", "localvit_micro"))
    assert (r["a"], r["b"], r["setting"], r["rounds"]) == ("vit_micro", "localvit_micro",
                                                           "eager", 2)
    assert r["amp"] is False and r["device"] == "cpu"        # AMP is the trainer's: CUDA only
    assert 0 < r["a_min_s"] <= r["a_median_s"] and 0 < r["b_min_s"] <= r["b_median_s"]
    best = gpu_check.best_of([r, {"setting": "compile", "error": "no compiler"}])
    assert best is not None and best["ratio_min"] == pytest.approx(r["ratio_min"])
    assert best["met"] == (max(best["ratio_min"], best["ratio_median"]) <= 1.05)
    assert gpu_check.best_of([{"setting": "compile", "error": "x"}]) is None
    # torch.compile wraps the model (compilation waits for the first step, not run here on
    # CPU) and the trainer's optimizer is built over the wrapped model's parameters.
    compiled = gpu_check.prepare_model("localvit_micro", "channels_last+compile", img_size=16,
                                       device=torch.device("cpu"))
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    gpu_check.trainer_step(compiled, batch=2, img_size=16, device=torch.device("cpu"), amp=True)
    with pytest.raises(ValueError, match="unknown setting"):
        gpu_check.prepare_model("vit_micro", "fast", img_size=16, device=torch.device("cpu"))


def test_sweep_sets_make_the_quick_start_a_fractional_gpu_sweep(tmp_path):
    sets = _gpu_sweep.sweep_sets(tmp_path / "s")
    spec = load_spec(_gpu_sweep.QUICKSTART, sets)
    res = spec.run.resources_per_trial
    assert (res.cpu, res.gpu, spec.run.max_concurrent) == (2, 0.25, 4)
    assert spec.name == "gpu_check" and spec.run.storage == str(tmp_path / "s")
    assert spec.base["device"] == "cuda" and spec.base["train"]["amp"] is True
    assert list(spec.seeds) == [0, 1] and spec.search.asha is not None
    assert spec.search.asha.grace_period == 1
    cmd = _gpu_sweep.sweep_command(sets)
    assert cmd[:4] == [sys.executable, "-m", "orchestrator.sweep", str(_gpu_sweep.QUICKSTART)]
    assert cmd[4::2] == ["--set"] * len(sets) and cmd[5::2] == sets


def test_trainer_records_where_each_epoch_trained(tmp_path):
    # On CPU, train.amp: true is not applied (AMP is CUDA-only): the epoch must say so.
    cfg = train_config_from_dict({
        "model": {"backbone": "localvit_micro", "arch": {"depth": 1, "embed_dim": 32}},
        "data": {"name": "digits", "val_fraction": 0.1},
        "train": {"epochs": 1, "batch_size": 16, "steps_per_epoch": 2, "amp": True,
                  "ema": False, "warmup_epochs": 0},
        "device": "cpu", "threads": 1})
    result = train(cfg)
    assert result.final["train/cuda"] == 0.0 and result.final["train/amp"] == 0.0


@pytest.fixture(scope="module")
def cpu_sweep(tmp_path_factory):
    """A real micro sweep on CPU: the GPU check's spec with no GPU, 1 seed, 2 short epochs."""
    storage = tmp_path_factory.mktemp("storage")
    sets = _gpu_sweep.sweep_sets(storage, gpu=0, cpus=1, device="cpu", amp=False, seeds=(0,),
                                 epochs=2, steps_per_epoch=2, max_concurrent=2)
    planned = _gpu_sweep.planned_trials(sets)
    # 900 s: on a loaded machine Ray starts the trials minutes late.
    run = _gpu_sweep.run_sweep_cli(sets, storage / "sweep.log", timeout_s=900)
    assert run.exit_code == 0, run.log.read_text()[-3000:]
    return storage / "gpu_check", planned


@pytest.mark.system
def test_verify_accepts_a_finished_sweep_as_it_ran(cpu_sweep):
    sweep_dir, planned = cpu_sweep
    assert len(planned) == 3
    v = _gpu_sweep.verify_sweep(sweep_dir, planned, cuda=False, amp=False)
    assert v.problems == []
    assert (v.trials, v.mlflow_runs) == (3, 3)
    assert v.epochs == sum(int(n) for n in read_trials(sweep_dir)["epochs_run"]) > 0
    assert sum(v.statuses.values()) == 3


@pytest.mark.system
def test_verify_reports_a_cpu_sweep_checked_as_a_gpu_one(cpu_sweep):
    sweep_dir, planned = cpu_sweep
    v = _gpu_sweep.verify_sweep(sweep_dir, planned, cuda=True, amp=True)
    for who in planned.values():
        for side in ("Parquet", "MLflow"):
            assert any(p.startswith(f"{side}: trial {who}: train/cuda is not 1")
                       for p in v.problems), (who, side, v.problems)
        assert f"Parquet: trial {who}: config train.amp is False" in v.problems
        assert f"MLflow: trial {who}: param train.amp is 'false'" in v.problems


@pytest.mark.system
def test_verify_reports_trials_missing_from_parquet_and_mlflow(cpu_sweep):
    from mlflow import MlflowClient

    from orchestrator.sinks.mlflow_store import default_tracking_uri

    sweep_dir, planned = cpu_sweep
    extra = dict(planned, deadbeef="ghost/seed9")
    v = _gpu_sweep.verify_sweep(sweep_dir, extra, cuda=False, amp=False)
    assert "Parquet: trial ghost/seed9 (deadbeef) has no row in trials.parquet" in v.problems
    assert "MLflow: trial ghost/seed9: 0 runs with trial_key deadbeef, expected 1" in v.problems
    assert len(v.problems) == 2
    # A trial that Parquet has and MLflow lost (its run deleted from the real store).
    client = MlflowClient(tracking_uri=default_tracking_uri(sweep_dir.parent))
    key, who = next(iter(planned.items()))
    exp = client.get_experiment_by_name("gpu_check")
    (run,) = client.search_runs([exp.experiment_id], f"tags.trial_key = '{key}'")
    client.delete_run(run.info.run_id)
    try:
        v = _gpu_sweep.verify_sweep(sweep_dir, planned, cuda=False, amp=False)
        assert v.problems == [f"MLflow: trial {who}: 0 runs with trial_key {key}, expected 1"]
        assert (v.trials, v.mlflow_runs) == (3, 2)
    finally:
        client.restore_run(run.info.run_id)
