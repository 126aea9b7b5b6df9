"""A corpus of malformed specs and --set overrides: each exits 2 with one message that
names the file and the key and says how to fix it, prints no traceback, and creates nothing (no
storage folder, no MLflow store, no Ray trial).

Every case edits the shipped quick start (or replaces it) and runs the real CLI entry point
in-process, without --dry-run: a case the checks let through would start a sweep and fail here.
"""

from pathlib import Path

import pytest

from orchestrator.sweep import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = (ROOT / "search_spaces" / "quickstart.yaml").read_text()


def edit(old: str, new: str) -> str:
    assert old in QUICKSTART, old
    return QUICKSTART.replace(old, new, 1)


# name -> (spec text or bytes, extra CLI args, what the message must say)
CASES = {
    # ---- not a spec at all ----
    "binary file": (b"\x00\x01\x02\xff\xfe" * 40, [], "not a text file"),
    "empty file": ("", [], "a sweep spec is a mapping"),
    "a YAML list": ("- name\n- seeds\n", [], "the file holds list"),
    "a YAML scalar": ("quickstart\n", [], "the file holds str"),
    "tab indentation": (QUICKSTART.replace("  model: {backbone", "\tmodel: {backbone", 1), [],
                        "spec.yaml:12:1: YAML syntax error"),
    "duplicate top-level key": (QUICKSTART + "\nseeds: [3]\n", [], "duplicate key 'seeds'"),
    "python object tag": ("!!python/object/apply:os.system ['true']\n", [],
                          "could not determine a constructor"),
    # ---- wrong types and absurd numbers ----
    "epochs not a number": (edit("epochs: 10", "epochs: ten"), [], "train.epochs"),
    "epochs 1e23": (edit("epochs: 10", "epochs: 1e23"), [], "train.epochs"),
    "epochs 10^23": (edit("epochs: 10", "epochs: 100000000000000000000000"), [],
                     "train.epochs: Input should be less than or equal to 100000"),
    "epochs negative": (edit("epochs: 10", "epochs: -3"), [], "train.epochs"),
    "batch size 0": (edit("batch_size: 64", "batch_size: 0"), [], "train.batch_size"),
    "lr not finite": (edit("lr: 2.0e-3", "lr: .inf"), [], "train.lr: Input should be a finite"),
    "lr NaN": (edit("lr: 2.0e-3", "lr: .nan"), [], "train.lr"),
    "val_fraction 1.5": (edit("val_fraction: 0.2", "val_fraction: 1.5"), [],
                         "data.val_fraction"),
    "seed beyond 32 bits": (edit("seeds: [0, 1, 2]", "seeds: [0, 99999999999999999999]"), [],
                            "seeds: every seed must be between 0 and 4294967295"),
    "seeds not integers": (edit("seeds: [0, 1, 2]", "seeds: [a, b]"), [], "seeds[0]"),
    "no seeds": (edit("seeds: [0, 1, 2]", "seeds: []"), [], "seeds: give at least one seed"),
    # ---- unknown names ----
    "unknown top-level key": (edit("seeds:", "sedes:"), [], "did you mean 'seeds'?"),
    "unknown model": (edit("backbone: localvit_micro", "backbone: localvit_mikro"), [],
                      "model.backbone: unknown model 'localvit_mikro'"),
    "unknown dataset": (edit("data: {name: digits, val_fraction: 0.2}", "data: {name: mnist}"),
                        [], "data.name"),
    "unknown axis key": (edit("model.locality.act: [relu6]", "model.locality.colour: [red]"),
                         [], "axes.model.locality.colour: unknown trial config key"),
    "unknown arm key": (edit("seeds:", "arms:\n  x: {train.lrr: 1.0e-3}\nseeds:"), [],
                        "arms.x.train.lrr: unknown trial config key 'train.lrr'; did you mean"),
    "unknown design": (edit("design: ofat", "design: random"), [], "design:"),
    "mode not max or min": (edit("mode: max", "mode: maximize"), [], "search.mode"),
    # ---- inconsistent designs ----
    "empty axis": (edit("[relu6]", "[]"), [], "axes.model.locality.act: empty axis"),
    "axis not a list": (edit("model.locality.act: [relu6]", "model.locality.act: relu6"), [],
                        "axes.model.locality.act: Input should be a valid list"),
    "duplicate arm names": (edit("seeds:", "arms:\n  x: {train.lr: 1.0e-3}\n"
                                           "  x: {train.lr: 2.0e-3}\nseeds:"), [],
                            "duplicate key 'x'"),
    "arm named like the baseline": (edit("seeds:", "arms:\n  baseline: {train.lr: 1.0e-3}\n"
                                                   "seeds:"), [], "arms.baseline"),
    "duplicate seeds": (edit("[0, 1, 2]", "[0, 1, 1]"), [], "seeds: duplicate seed(s) [1]"),
    "a question about an unknown arm": (
        edit("seeds:", "compare:\n  - act=relu7: baseline\nseeds:"), [],
        "compare.act=relu7: no arm named 'act=relu7'; did you mean 'act=relu6'?"),
    "a question against another arm than the reference": (
        edit("seeds:", "compare:\n  - act=relu6: localvit\nseeds:"), [],
        "compare.act=relu6: 'act=relu6' is measured against 'baseline' (its reference)"),
    "an unknown compare rule": (edit("seeds:", "compare: everything\nseeds:"), [],
                                "compare: unknown rule 'everything'"),
    "grace period beyond the epochs": (edit("grace_period: 5", "grace_period: 50"), [],
                                       "search.scheduler.asha.grace_period: 50"),
    "unknown metric": (edit("metric: val/top1", "metric: val_ema/top1"), [], "search.metric"),
    # ---- impossible resources and paths ----
    "zero CPUs per trial": (edit("resources_per_trial: {cpu: 1}", "resources_per_trial: {cpu: 0}"),
                            [], "run.resources_per_trial.cpu"),
    "more CPUs than the machine": (edit("resources_per_trial: {cpu: 1}",
                                        "resources_per_trial: {cpu: 1000}"), [],
                                   "run.resources_per_trial: a trial asks for 1000 CPU"),
    "a GPU on a machine without one": (
        edit("resources_per_trial: {cpu: 1}", "resources_per_trial: {cpu: 1, gpu: 64}"), [],
        "run.resources_per_trial: a trial asks for 1 CPU and 64 GPU"),
    "zero concurrency": (edit("max_concurrent: 2", "max_concurrent: 0"), [], "run.max_concurrent"),
    "a name that climbs out of the storage": (edit("name: quickstart", "name: ../../escape"), [],
                                              "name: must be letters, digits"),
    "a name with a slash": (edit("name: quickstart", "name: a/b"), [], "name: must be letters"),
    # ---- --set overrides ----
    "--set without '='": (QUICKSTART, ["--set", "seeds"], "seeds"),
    "--set unknown key": (QUICKSTART, ["--set", "sedes=[1]"], "sedes"),
    "--set broken YAML value": (QUICKSTART, ["--set", "seeds=[1,"], "seeds"),
    "--set wrong type": (QUICKSTART, ["--set", "base.train.epochs=ten"], "train.epochs"),
    "--set absurd epochs": (QUICKSTART, ["--set", "base.train.epochs=1e23"], "train.epochs"),
    "--set unknown trial key": (QUICKSTART, ["--set", "base.train.nope=1"], "train.nope"),
    # ---- where Tune keeps its state on a cluster ----
    "tune_storage over http": (QUICKSTART, ["--set", "run.tune_storage=http://host/x"],
                               "cannot keep checkpoints at a http:// address"),
    "tune_storage with a missing slash": (QUICKSTART, ["--set", "run.tune_storage=s3:/bucket"],
                                          "looks like a URI with a missing slash"),
    "tune_storage without a bucket": (QUICKSTART, ["--set", "run.tune_storage=gs://"],
                                      "names no bucket"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_input_exits_2_with_one_clear_message_and_creates_nothing(
        case, ray_session, tmp_path, capsys):
    body, extra, needle = CASES[case]
    spec = tmp_path / "spec.yaml"
    if isinstance(body, bytes):
        spec.write_bytes(body)
    else:
        spec.write_text(body)
    storage = tmp_path / "store"
    code = main([str(spec), "--set", f"run.storage={storage}", *extra])
    out = capsys.readouterr()
    assert code == 2, out.err
    assert out.err.startswith("error: ") and needle in out.err, out.err
    assert "spec.yaml" in out.err or "--set" in out.err, out.err
    assert "Traceback" not in out.err + out.out
    assert not storage.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


@pytest.mark.parametrize("target", ["a folder", "a missing file"])
def test_a_folder_or_a_missing_path_as_the_spec_exits_2(target, tmp_path, capsys):
    path = tmp_path if target == "a folder" else tmp_path / "nope.yaml"
    code = main([str(path), "--set", f"run.storage={tmp_path / 'store'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {path}: ")
    assert ("is a folder" if target == "a folder" else "no such spec file") in err
    assert not (tmp_path / "store").exists()


def test_the_corpus_is_at_least_thirty_cases():
    assert len(CASES) >= 30
