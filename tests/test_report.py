"""python -m orchestrator.report on sweep folders written by the real ParquetSink (no Ray).

Each scenario feeds TrialInfo / TrialOutcome events with real TrainConfig dicts to
`tables.ParquetSink` (as tests/sink_scenario.py does), then checks the report against scipy and
statsmodels directly: arms.csv, stopped and failed arms, the per-axis and backbone tables, the
search report, --compare-to, and the CLI's exit 2 on missing or corrupt tables with the previous
report/ left as it was.
"""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from orchestrator import report as report_mod
from orchestrator.report import ReportError, main, verdict_table, write_report
from orchestrator.scheduling.decisions import Decision, write_decisions
from orchestrator.sinks.base import TrialInfo, TrialOutcome
from orchestrator.sinks.parquet import ParquetSink
from trainers.config import apply_overrides, train_config_from_dict

METRIC = "val/top1"
PUBLISHED = Path(__file__).resolve().parents[1] / "search_spaces" / "published" / "localvit.yaml"
BASE = {"model": {"backbone": "localvit_micro", "locality": {"act": "hs+se"}},
        "data": {"name": "digits"}, "train": {"epochs": 4}}


def _trial(arm, seed, final, *, status="completed", overrides=None, epochs=4, reason=None,
           params=1000, macs=50000, tags=None):
    return dict(arm=arm, seed=seed, final=final, status=status, overrides=overrides or {},
                epochs=epochs, reason=reason, params=params, macs=macs, tags=tags or {})


def build_sweep(directory: Path, spec: dict, trials: list[dict]) -> Path:
    """Feed the trials to a real ParquetSink; returns the sweep folder."""
    sink = ParquetSink()
    sink.start(sweep_name=spec["name"], storage_dir=str(directory), spec=spec, metric=METRIC,
               mode=spec["search"].get("mode", "max"), total_trials=len(trials))
    for t in trials:
        key = f"{t['arm']}-{t['seed']}-{len(t['tags'])}".replace("=", "_").replace(",", "_")
        key += "-" + "-".join(f"{v}" for v in t["tags"].values())
        cfg = train_config_from_dict(apply_overrides(BASE, {**t["overrides"], "seed": t["seed"]}))
        sink.trial_started(TrialInfo(key=key, arm=t["arm"], seed=t["seed"], config=cfg.to_dict(),
                                     backbone=cfg.model.backbone, tags=t["tags"]))
        n = t["epochs"]
        for e in range(1, n + 1):
            value = t["final"] * (0.6 + 0.4 * e / n) if t["final"] is not None else 0.1
            sink.epoch(key, e, {METRIC: value, "val/loss": 1.0 / e})
        final = {} if t["status"] == "failed" else {METRIC: t["final"]}
        sink.trial_finished(TrialOutcome(
            key, t["status"], t["reason"] or f"completed all {n} epochs", n, 1.0, final=final,
            best=final, params=t["params"] if t["status"] != "failed" else None,
            macs=t["macs"] if t["status"] != "failed" else None))
    sink.finish()
    return directory


def _plan_arm(overrides=None, factors=None, reference="baseline", aliases=()):
    return {"overrides": overrides or {}, "aliases": list(aliases), "factors": factors or {},
            "reference": reference}


# ------------------------------------------------------------------------- an ofat ablation

ABLATION_SPEC = {
    "name": "abl", "base": BASE, "baseline": {"model.backbone": "vit_micro",
                                              "model.locality": None},
    "axes": {"model.locality.act": ["relu6", "hs", "hs+se"]}, "arms": {}, "design": "ofat",
    "base_arm": "localvit", "seeds": [0, 1, 2], "references": {},
    "search": {"metric": METRIC, "mode": "max", "space": {}},
    "plan": {"arms": {
        "baseline": _plan_arm({"model.backbone": "vit_micro", "model.locality": None},
                              reference=None),
        "localvit": _plan_arm(aliases=["act=hs+se"]),
        "act=relu6": _plan_arm({"model.locality.act": "relu6"}, {"model.locality.act": "relu6"}),
        "act=hs": _plan_arm({"model.locality.act": "hs"}, {"model.locality.act": "hs"}),
        "act=hs+eca": _plan_arm({"model.locality.act": "hs+eca"},
                                {"model.locality.act": "hs+eca"}),
    }, "protected": ["baseline", "localvit"], "asha_unit": "arm"},
}
VALUES = {
    "baseline": [0.60, 0.64, 0.55],
    "localvit": [0.95, 0.97, 0.93],       # clearly better
    "act=relu6": [0.63, 0.62, 0.57],      # about the same
    "act=hs+eca": [0.90, 0.91, None],     # seed 2 failed
}
OVERRIDES = {a: dict(ABLATION_SPEC["plan"]["arms"][a]["overrides"])
             for a in ABLATION_SPEC["plan"]["arms"]}


def _ablation_trials():
    trials = []
    for arm, values in VALUES.items():
        for seed, v in enumerate(values):
            if v is None:
                trials.append(_trial(arm, seed, None, status="failed", epochs=2,
                                     overrides=OVERRIDES[arm], reason="RuntimeError: boom"))
            else:
                trials.append(_trial(arm, seed, v, overrides=OVERRIDES[arm],
                                     params=2000 if arm != "baseline" else 1500))
    for seed in range(3):
        trials.append(_trial("act=hs", seed, 0.3 + 0.01 * seed, status="stopped", epochs=2,
                             overrides=OVERRIDES["act=hs"],
                             reason="arm: act=hs mean val/top1=0.31 over 3 seeds below rung-1 "
                                    "cutoff 0.6 at epoch 2 (rank 5 of 5; the best 2 go on)"))
    return trials


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    directory = build_sweep(tmp_path_factory.mktemp("abl") / "abl", ABLATION_SPEC,
                            _ablation_trials())
    write_decisions(directory, [Decision(
        rung=1, milestone=2, arm="act=hs", reference="baseline", rule="halving", action="stop",
        n=3, arm_mean=0.31, cutoff=0.6, n_pairs=3, diff_mean=-0.29, diff_sd=0.01, t_stat=None,
        p_value=None, reason="arm: act=hs below the cutoff")])
    rep = write_report(directory, compare_to=PUBLISHED)
    return directory, rep


def test_arms_csv_has_exactly_the_columns_and_the_values_of_scipy(ablation):
    directory, rep = ablation
    csv = pd.read_csv(directory / "report" / "arms.csv")
    assert tuple(csv.columns) == report_mod.ARMS_CSV_COLUMNS
    assert list(csv["arm"]) == ["baseline", "localvit", "act=relu6", "act=hs", "act=hs+eca"]
    row = csv.set_index("arm")
    base = np.array(VALUES["baseline"])
    tested = {"localvit": (VALUES["localvit"], base),
              "act=relu6": (VALUES["act=relu6"], base),
              "act=hs+eca": (VALUES["act=hs+eca"][:2], base[:2])}
    ps = {a: sps.ttest_rel(np.array(v), b).pvalue for a, (v, b) in tested.items()}
    # act=hs was stopped early: a planned comparison, counted in the correction with p = 1.
    holm = dict(zip(ps, multipletests(list(ps.values()) + [1.0], method="holm")[1],
                    strict=False))
    for arm, (v, b) in tested.items():
        assert row.loc[arm, "baseline"] == "baseline"
        assert row.loc[arm, "diff"] == pytest.approx(np.mean(np.array(v) - b))
        assert row.loc[arm, "p_value"] == pytest.approx(ps[arm], rel=1e-9)
        assert row.loc[arm, "p_holm"] == pytest.approx(holm[arm], rel=1e-9)
    lv = np.array(VALUES["localvit"])
    low, high = sps.t.interval(0.95, 2, loc=lv.mean(), scale=sps.sem(lv))
    assert (row.loc["localvit", "mean"], row.loc["localvit", "std"]) == \
        (pytest.approx(lv.mean()), pytest.approx(lv.std(ddof=1)))
    assert (row.loc["localvit", "ci_low"], row.loc["localvit", "ci_high"]) == \
        (pytest.approx(low), pytest.approx(high))
    assert row.loc["localvit", "verdict"] == "better"
    assert row.loc["act=relu6", "verdict"] == "n.s."
    assert row.loc["baseline", "verdict"] == "reference"
    assert (row.loc["localvit", "params"], row.loc["baseline", "params"]) == (2000, 1500)
    assert row.loc["localvit", "macs"] == 50000


def test_stopped_arm_is_shown_at_its_rung_without_an_estimate(ablation):
    directory, rep = ablation
    row = rep.arms.set_index("arm").loc["act=hs"]
    assert (row["n_completed"], row["n_stopped"]) == (0, 3)
    assert row["verdict"] == "stopped at rung 1 (epoch 2)"
    assert pd.isna(row["mean"]) and pd.isna(row["p_value"]) and pd.isna(row["p_holm"])
    md = (directory / "report" / "ablation.md").read_text()
    assert "| act=hs | baseline | 0/3 | — |" in md
    assert "mean val/top1 0.3100 there (not a final estimate" in md


def test_failed_seed_is_left_out_of_the_pairing_and_flagged(ablation):
    directory, rep = ablation
    row = rep.arms.set_index("arm").loc["act=hs+eca"]
    assert (row["n_completed"], row["n_failed"], row["n_pairs"]) == (2, 1, 2)
    md = (directory / "report" / "ablation.md").read_text()
    assert "act=hs+eca: seed 2 failed (RuntimeError: boom): excluded" in md
    assert "| act=hs+eca | baseline | 2/0/1 |" in md


def test_axis_table_like_the_paper_with_base_marked_and_best_in_bold(ablation):
    directory, _ = ablation
    md = (directory / "report" / "ablation.md").read_text()
    table = md.split("**model.locality.act (val/top1")[1].split("\n\n")[1]
    lines = table.splitlines()
    assert lines[0].startswith("| act | arm | params | MACs | val/top1 mean ± std |")
    labels = [line.split(" | ")[0].lstrip("| ") for line in lines[2:]]
    assert labels == ["baseline", "relu6", "hs", "hs+se (base)"]
    assert "| hs+se (base) | localvit | 2.00K | 50.0K | **0.9500 ± 0.0200** |" in table
    assert "stopped at rung 1 (epoch 2)" in lines[4]
    tex = (directory / "report" / "ablation.tex").read_text()
    assert "\\toprule" in tex and "\\textbf{0.9500 $\\pm$ 0.0200}" in tex
    html = (directory / "report" / "ablation.html").read_text()
    assert "<b>0.9500 ± 0.0200</b>" in html


def test_report_files_and_plots(ablation):
    directory, rep = ablation
    names = {p.name for p in rep.files}
    assert {"arms.csv", "ablation.md", "ablation.tex", "ablation.html", "published.csv",
            "metric_vs_params.png", "metric_vs_macs.png", "learning_curves.png",
            "differences.png"} <= names
    for path in rep.files:
        assert path.parent == directory / "report" and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(directory.glob(".report*"))


def test_compare_to_puts_published_values_beside_ours(ablation):
    directory, rep = ablation
    pub = rep.published.set_index("arm")
    # `localvit` is listed under LocalViT-T, `baseline` under DeiT-T.
    assert pub.loc["localvit", "published_model"] == "LocalViT-T"
    assert pub.loc["localvit", "published_top1"] == pytest.approx(74.8)
    assert pub.loc["localvit", "published_gain"] == pytest.approx(2.6)
    assert pub.loc["localvit", "ours_mean_pct"] == pytest.approx(95.0)
    assert pub.loc["localvit", "ours_diff_pp"] == pytest.approx(100 * np.mean(
        np.array(VALUES["localvit"]) - np.array(VALUES["baseline"])))
    md = (directory / "report" / "ablation.md").read_text()
    assert "published top-1 (%)" in md and "ours: val/top1 × 100 (%)" in md
    assert "| localvit | LocalViT-T | 74.80 | +2.60 vs DeiT-T |" in md


def test_verdict_table_for_the_terminal(ablation):
    from rich.console import Console

    _, rep = ablation
    table = verdict_table(rep)
    assert [c.header for c in table.columns] == ["arm", "n", "mean ± std", "diff", "p (Holm)",
                                                 "verdict"]
    out = io.StringIO()
    Console(file=out, width=160).print(table)
    text = out.getvalue()
    assert "better" in text and "stopped at rung 1 (epoch 2)" in text and "3/0" in text
    # At 80 columns every arm name and its reference stay whole.
    out = io.StringIO()
    Console(file=out, width=80).print(table)
    lines = out.getvalue().splitlines()
    for arm in rep.arms["arm"]:
        assert any(line.startswith(f" {arm} ") for line in lines), arm
    assert sum("  vs baseline" in line for line in lines) == len(rep.arms) - 1


# --------------------------------------------------------------------- backbones (Table 5)

BACKBONE_SPEC = {
    "name": "bb", "base": BASE, "baseline": {"model.backbone": "vit_micro",
                                             "model.locality": None},
    "axes": {}, "arms": {}, "design": "ofat", "base_arm": "base", "seeds": [0, 1, 2],
    "references": {"localvit_pvt_micro": "pvt_micro"},
    "search": {"metric": METRIC, "mode": "max", "space": {}},
    "plan": {"arms": {
        "baseline": _plan_arm(reference=None),
        "localvit_micro": _plan_arm(),
        "pvt_micro": _plan_arm(),
        "localvit_pvt_micro": _plan_arm(reference="pvt_micro"),
    }},
}
BB_ARMS = {"baseline": ("vit_micro", [0.70, 0.75, 0.72]),
           "localvit_micro": ("localvit_micro", [0.97, 0.99, 0.98]),
           "pvt_micro": ("pvt_micro", [0.96, 0.95, 0.97]),
           "localvit_pvt_micro": ("localvit_pvt_micro", [0.99, 0.985, 0.995])}


def test_backbone_table_pairs_each_arm_with_its_own_reference(tmp_path):
    trials = []
    for arm, (backbone, values) in BB_ARMS.items():
        over = {"model.backbone": backbone, "model.locality": "default"}
        for seed, v in enumerate(values):
            trials.append(_trial(arm, seed, v, overrides=over))
    # Per-trial ASHA stopped one seed of pvt_micro: not averaged in with the finished ones.
    trials[7] = _trial("pvt_micro", 1, 0.5, status="stopped", epochs=2,
                       overrides={"model.backbone": "pvt_micro", "model.locality": "default"},
                       reason="asha: val/top1=0.5 below rung-1 cutoff 0.6 at epoch 2")
    directory = build_sweep(tmp_path / "bb", BACKBONE_SPEC, trials)
    rep = write_report(directory)
    rows = rep.arms.set_index("arm")
    assert rows.loc["localvit_pvt_micro", "baseline"] == "pvt_micro"
    lp, pvt = np.array(BB_ARMS["localvit_pvt_micro"][1]), np.array([0.96, 0.97])
    assert rows.loc["localvit_pvt_micro", "diff"] == pytest.approx(np.mean(lp[[0, 2]] - pvt))
    assert rows.loc["localvit_pvt_micro", "n_pairs"] == 2
    assert rows.loc["pvt_micro", "mean"] == pytest.approx(0.965)
    assert (rows.loc["pvt_micro", "n_completed"], rows.loc["pvt_micro", "n_stopped"]) == (2, 1)
    md = (directory / "report" / "ablation.md").read_text()
    table = md.split("**Backbones: each arm beside its own reference")[1].split("\n\n")[1]
    body = table.splitlines()[2:]
    assert len(body) == 2                       # pvt_micro is a reference, not a row of its own
    assert body[0].startswith("| baseline [vit_micro] |") and "| localvit_micro |" in body[0]
    assert body[1].startswith("| pvt_micro |") and "| localvit_pvt_micro |" in body[1]
    assert "**0.9900 ± 0.0050**" in body[1] and "**0.9650" not in body[1]
    assert "pvt_micro: seed(s) 1 stopped early at rung 1 (epoch 2): not averaged in" in md


# --------------------------------------------------------------------------------- a search

SEARCH_SPEC = {
    "name": "hpo", "base": BASE, "seeds": [0],
    "search": {"metric": METRIC, "mode": "max", "space": {
        "train.lr": {"choice": None, "grid": None, "uniform": None,
                     "loguniform": [1e-4, 1e-2], "randint": None},
        "model.drop_path": {"uniform": [0.0, 0.3]},
        "train.warmup_epochs": {"randint": [0, 3]},
        "train.opt": {"choice": ["adamw", "sgd"]}}},
    "plan": {"arms": {"hpo": _plan_arm(reference=None)}},
}


def _search_trials(n_completed: int):
    rng = np.random.default_rng(1)
    out = []
    for i in range(6):
        lr = float(10 ** rng.uniform(-4, -2))
        sampled = {"sampled.train.lr": str(lr), "sampled.model.drop_path": str(0.05 * i),
                   "sampled.train.warmup_epochs": str(i % 3),
                   "sampled.train.opt": ["adamw", "sgd"][i % 2]}
        value = 0.5 + 0.1 * math.log10(lr)  + 0.02 * i
        done = i < n_completed
        out.append(_trial("hpo", 0, value, status="completed" if done else "stopped",
                          epochs=4 if done else 1, tags=sampled,
                          reason=None if done else "asha: below rung-1 cutoff at epoch 1",
                          overrides={"train.lr": lr}))
    return out


def test_search_report_ranks_trials_and_gives_importances(tmp_path):
    directory = build_sweep(tmp_path / "hpo", SEARCH_SPEC, _search_trials(n_completed=5))
    rep = write_report(directory)
    assert rep.kind == "search" and rep.arms.empty
    ranked = pd.read_csv(directory / "report" / "trials.csv")
    assert list(ranked["status"]) == ["completed"] * 5 + ["stopped"]
    finals = list(ranked["metric_final"][:5])
    assert finals == sorted(finals, reverse=True)
    assert {"train.lr", "model.drop_path", "train.warmup_epochs", "train.opt"} <= set(ranked)
    imp = pd.read_csv(directory / "report" / "importances.csv")
    assert set(imp["parameter"]) == {"train.lr", "model.drop_path", "train.warmup_epochs",
                                     "train.opt"}
    assert imp["importance"].sum() == pytest.approx(1.0)
    names = {p.name for p in rep.files}
    assert {"search.md", "search.tex", "search.html", "search_values.png"} <= names
    assert "arms.csv" not in names
    text = io.StringIO()
    from rich.console import Console

    Console(file=text, width=160).print(verdict_table(rep))
    assert "completed" in text.getvalue()


def test_search_with_one_completed_trial_says_why_there_are_no_importances(tmp_path):
    directory = build_sweep(tmp_path / "hpo1", SEARCH_SPEC, _search_trials(n_completed=1))
    rep = write_report(directory)
    assert rep.search.importances is None
    md = (directory / "report" / "search.md").read_text()
    assert "need at least 2 completed trials" in md
    assert not (directory / "report" / "importances.csv").exists()


# ------------------------------------------------------------------------ bad input, CLI

def test_compare_to_with_an_unknown_key_names_the_file_and_key(ablation, tmp_path, capsys):
    bad = tmp_path / "pub.yaml"
    bad.write_text(PUBLISHED.read_text().replace("top5: 92.6", "top_5: 92.6"))
    with pytest.raises(ReportError, match=r"pub\.yaml: entries\[1\]\.top_5: unknown key"):
        write_report(ablation[0], compare_to=bad)
    assert main([str(ablation[0]), "--compare-to", str(bad)]) == 2
    assert "top_5" in capsys.readouterr().err


@pytest.fixture()
def good_copy(ablation, tmp_path):
    """A copy of the ablation sweep with its good report."""
    directory = tmp_path / "copy"
    shutil.copytree(ablation[0], directory)
    return directory


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("name", ["trials.parquet", "epochs.parquet"])
@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_table_exits_2_naming_the_file(good_copy, name, damage, capsys):
    before = _snapshot(good_copy / "report")
    if damage == "missing":
        (good_copy / name).unlink()
    else:
        (good_copy / name).write_bytes(b"\x00garbage, not parquet\xff" * 10)
    assert main([str(good_copy)]) == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err
    assert ("not found" in err) if damage == "missing" else ("not a readable Parquet" in err)
    assert _snapshot(good_copy / "report") == before
    assert not list(good_copy.glob(".report*"))


def test_a_failure_while_building_leaves_the_previous_report(good_copy, monkeypatch):
    before = _snapshot(good_copy / "report")

    def boom(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr("orchestrator.report.plots.size_plots", boom)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_report(good_copy)
    assert _snapshot(good_copy / "report") == before
    assert not list(good_copy.glob(".report*"))


def test_not_a_sweep_folder(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such sweep folder" in capsys.readouterr().err
    (tmp_path / "trials.parquet").write_bytes(b"x")
    assert main([str(tmp_path)]) == 2
    assert "spec.yaml: not found" in capsys.readouterr().err


def test_plots_of_a_large_study_show_the_largest_differences_and_say_how_many(tmp_path,
                                                                              monkeypatch):
    """60 arms: the curves show 24 panels and the differences 40 rows, the arms with the largest
    |difference| (ties broken by order), and each title says how many of how many."""
    from orchestrator.report import plots

    arms = ["baseline", *(f"a{i:02d}" for i in range(60))]
    diffs = {a: (i % 7) * 0.01 * (-1) ** i for i, a in enumerate(arms[1:])}
    df = pd.DataFrame([{"arm": a, "baseline": None if a == "baseline" else "baseline",
                        "state": "finished", "stopped_at": None, "diff": diffs.get(a),
                        "diff_ci_low": None, "diff_ci_high": None, "verdict": "n.s."}
                       for a in arms])
    trials = pd.DataFrame([{"trial_key": f"{a}-{s}", "arm": a, "status": "completed"}
                           for a in arms for s in range(2)])
    epochs = pd.DataFrame([{"trial_key": k, "epoch": e, METRIC: 0.1 * e}
                           for k in trials["trial_key"] for e in (1, 2, 3)])
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.name, fig))
    plots.curve_plot(df, trials, epochs, METRIC, tmp_path)
    plots.difference_plot(df, METRIC, "max", tmp_path)

    curves = figures["learning_curves.png"]
    panels = [ax.get_title() for ax in curves.axes if ax.get_visible()]
    largest = sorted(diffs, key=lambda a: -abs(diffs[a]))
    assert len(panels) == 24 and "24 of 61 arms shown" in curves._suptitle.get_text()
    assert all(abs(diffs[t.split(" (")[0]]) >= abs(diffs[largest[24]]) for t in panels)
    rows = figures["differences.png"].axes[0]
    assert len(rows.get_yticklabels()) == 40
    assert "40 of 60 comparisons shown" in rows.get_title()
