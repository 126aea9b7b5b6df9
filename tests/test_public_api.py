"""The packages as libraries: `import trainers` registers every model with timm, both packages
export their API with __all__, and `import orchestrator` stays light (no Ray, MLflow or torch)."""

import subprocess
import sys

import pytest


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.system
def test_import_trainers_registers_every_variant_with_timm_in_a_fresh_interpreter():
    proc = _fresh("import timm, trainers\n"
                  "m = timm.create_model('localvit_tiny')\n"
                  "assert sum(p.numel() for p in m.parameters()) == 5_908_696\n"
                  "assert all(timm.is_model(n) for n in trainers.list_models())\n"
                  "print('ok')")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("package", ["trainers", "orchestrator"])
def test_every_exported_name_resolves(package):
    module = __import__(package)
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert set(module.__all__) <= set(dir(module))


def test_the_names_the_issue_promises():
    import orchestrator
    import trainers
    from orchestrator.report import write_report
    from trainers.train import train

    assert trainers.train is train and callable(trainers.train)
    assert {"create_model", "train", "TrainConfig", "LocalitySpec", "RECIPES"} <= set(
        trainers.__all__)
    assert {"load_spec", "build_plan", "run_sweep", "write_report"} <= set(orchestrator.__all__)
    assert orchestrator.write_report is write_report
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        orchestrator.nope  # noqa: B018


def test_import_orchestrator_is_light():
    proc = _fresh("import sys, orchestrator\n"
                  "heavy = [m for m in ('ray', 'mlflow', 'torch', 'matplotlib', 'trainers')\n"
                  "         if m in sys.modules]\n"
                  "print(heavy)")
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
