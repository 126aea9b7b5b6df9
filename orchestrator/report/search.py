"""The report of a hyper-parameter search (a spec with `search.space`; every trial is arm "hpo").

Averaging unrelated samples means nothing, so a search gets instead:

- the trials ranked by the metric with their sampled values: completed trials first (by their
  final value, best first by the mode), then those stopped early (by epochs reached, then value:
  a value at an earlier epoch is not comparable with a final one), then failed ones;
- Optuna's parameter importances (fANOVA, seeded), computed on an in-memory study built from the
  completed trials with `optuna.trial.create_trial` and distributions that match the spec's
  domains; none, with the reason, when fewer than 2 trials completed or no parameter varied.

Sampled values come from the trial's `sampled.<key>` tags (what the searcher proposed), else from
its `config.<key>` column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.importance import FanovaImportanceEvaluator, get_param_importances

from orchestrator.report.inputs import SweepInputs, canonical
from orchestrator.report.render import Table, cells

__all__ = ["SearchResult", "importances", "ranked_trials", "search_result", "search_tables"]


@dataclass(frozen=True)
class SearchResult:
    ranked: pd.DataFrame                     # rank, trial_key, status, ..., one column per key
    importances: Mapping[str, float] | None  # key -> importance (sums to 1), or None
    importance_note: str                     # why there are none, or how they were computed


def _decode(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def ranked_trials(inputs: SweepInputs) -> pd.DataFrame:
    keys = list(inputs.space)
    rows = []
    for t in inputs.trials.to_dict("records"):
        tags = _decode(t.get("tags")) or {}
        row = {k: t.get(k) for k in ("trial_key", "status", "epochs_run", "metric_final",
                                     "metric_best", "stop_reason")}
        for key in keys:
            if f"sampled.{key}" in tags:
                row[key] = _decode(tags[f"sampled.{key}"])
            else:
                row[key] = t.get(f"config.{key}")
        rows.append(row)
    df = pd.DataFrame(rows)
    sign = -1.0 if inputs.mode == "max" else 1.0

    def order(r: Mapping[str, Any]) -> tuple:
        value = r["metric_final"]
        finite = value is not None and math.isfinite(float(value))
        group = {"completed": 0, "stopped": 1}.get(r["status"], 2)
        return (group, -(r["epochs_run"] or 0) if group == 1 else 0, not finite,
                sign * float(value) if finite else 0.0, r["trial_key"])

    df = df.iloc[sorted(range(len(df)), key=lambda i: order(df.iloc[i]))].reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    return df


def _distribution(kind: str, values: Any):
    if kind == "loguniform":
        return FloatDistribution(float(values[0]), float(values[1]), log=True)
    if kind == "uniform":
        return FloatDistribution(float(values[0]), float(values[1]))
    if kind == "randint":
        return IntDistribution(int(values[0]), int(values[1]))
    return CategoricalDistribution([_categorical(v) for v in values])


def _categorical(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) \
        else canonical(value)


def importances(inputs: SweepInputs, ranked: pd.DataFrame) -> tuple[dict[str, float] | None, str]:
    done = ranked[(ranked["status"] == "completed")
                  & ranked["metric_final"].map(lambda v: v is not None and math.isfinite(v))]
    if len(done) < 2:
        return None, (f"none: {len(done)} trial(s) completed; parameter importances need at "
                      f"least 2 completed trials (stopped trials were measured at an earlier "
                      f"epoch and are left out)")
    keys = list(inputs.space)
    varying = [k for k in keys if done[k].map(canonical).nunique() > 1]
    if not varying:
        return None, "none: no searched parameter took more than one value in the completed trials"
    dists = {k: _distribution(*inputs.space[k]) for k in keys}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            direction="maximize" if inputs.mode == "max" else "minimize")
        for row in done.to_dict("records"):
            params = {k: (_categorical(row[k]) if inputs.space[k][0] in ("choice", "grid")
                          else row[k]) for k in keys}
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions=dists, value=float(row["metric_final"])))
        result = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                       params=varying)
    except (ValueError, TypeError, RuntimeError) as exc:
        return None, f"none: Optuna could not use the trials ({type(exc).__name__}: {exc})"
    finally:
        optuna.logging.set_verbosity(verbosity)
    return ({k: float(v) for k, v in result.items()},
            f"Optuna fANOVA importances (seed 0) over {len(done)} completed trials and the "
            f"{len(varying)} parameter(s) that varied; they sum to 1")


def search_result(inputs: SweepInputs) -> SearchResult:
    ranked = ranked_trials(inputs)
    imp, note = importances(inputs, ranked)
    return SearchResult(ranked, imp, note)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return "—" if value is None else str(value)


def search_tables(inputs: SweepInputs, result: SearchResult) -> list[Table]:
    keys = list(inputs.space)
    body = [cells(r["rank"], r["trial_key"], r["status"], r["epochs_run"],
                  _fmt(r["metric_final"]), _fmt(r["metric_best"]), *(_fmt(r[k]) for k in keys),
                  bold=[False, False, False, False, r["rank"] == 1])
            for r in result.ranked.to_dict("records")]
    ranked = Table(
        f"Trials ranked by {inputs.metric} ({inputs.mode}, best first): completed, then stopped "
        f"early, then failed", ("rank", "trial", "status", "epochs", f"{inputs.metric} final",
                                f"{inputs.metric} best", *keys), tuple(body),
        notes=("Stopped trials are ranked after every completed one: their value is from the "
               "epoch where they stopped.",))
    out = [ranked]
    if result.importances:
        imp_rows = tuple(cells(k, f"{v:.3f}") for k, v in result.importances.items())
        out.append(Table("Parameter importances", ("parameter", "importance"), imp_rows,
                         notes=(result.importance_note,)))
    return out
