"""`python -m orchestrator.sync SWEEP_DIR`: bring MLflow up to date from the sweep's Parquet tables.

Parquet is the sweep's system of record; MLflow mirrors it. When the MLflow store was unreachable
or locked during a sweep (the sweep went on, said so once and exited 1), this replays every
finished trial of `trials.parquet`, with its curve from `epochs.parquet`, into the store through
the same sink the sweep uses. The sink finds the runs that exist by their trial key and logs only
what they lack, so a sync is safe to repeat: one parent run per sweep, one child run per trial,
one metric point per epoch; a run already ended with its row's status and epochs is left as it is
(a resumed or grown sweep's earlier runs keep their end times). The report folder, when there is
one, is logged to the parent run.

Trials that had not finished when the driver stopped have no row in trials.parquet yet; the next
`--resume` finishes them and logs them.

    python -m orchestrator.sync sweeps/quickstart                    # the sweep's default store
    python -m orchestrator.sync sweeps/quickstart --tracking-uri http://127.0.0.1:5000

Exit codes: 0 synced, 2 bad input (no sweep there, a missing or unreadable spec.yaml or table,
no finished trial yet: the same checks and messages as `orchestrator.report`), 1 MLflow failed
(the message says what it raised).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import SweepError
from orchestrator.report.inputs import load_sweep
from orchestrator.sinks.base import TrialInfo, TrialOutcome
from orchestrator.sinks.mlflow import MlflowSink
from orchestrator.sinks.mlflow_store import default_tracking_uri, log_report

__all__ = ["SyncResult", "sync", "main"]


@dataclass(frozen=True)
class SyncResult:
    tracking_uri: str
    experiment: str
    trials: int
    epochs: int


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def sync(sweep_dir: str | Path, tracking_uri: str | None = None) -> SyncResult:
    """Replay the sweep's finished trials into MLflow (idempotent); see the module docstring."""
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    # The report's reader: the same checks, and a missing or damaged file named the same way.
    sweep = load_sweep(sweep_dir)
    uri = tracking_uri or default_tracking_uri(sweep_dir.parent)
    # What the sweep planned (its parent run's total_trials): a search's samples, else the plan
    # record's trials (arms x seeds, or those a rule adding seeds has started so far).
    recorded = (sweep.spec.get("plan") or {}).get("trials") or ()
    total = (sweep.spec["search"].get("num_samples") if sweep.is_search
             else len(recorded) or len(sweep.arms) * max(1, len(sweep.seeds)))

    sink = MlflowSink(uri, background=False)
    sink.start(sweep_name=sweep.name, storage_dir=str(sweep_dir), spec=sweep.spec,
               metric=sweep.metric, mode=sweep.mode, total_trials=total or len(sweep.trials))
    curves = {key: g.sort_values("epoch") for key, g in sweep.epochs.groupby("trial_key")}
    n_epochs = 0
    for row in sweep.trials.to_dict("records"):
        key = row["trial_key"]
        if sink.holds(key, row["status"], int(row["epochs_run"])):
            continue            # whole in the store already: its run stays as it is
        config = json.loads(row["config"]) if isinstance(row["config"], str) else row["config"]
        tags = json.loads(row["tags"]) if isinstance(row.get("tags"), str) else {}
        sink.trial_started(TrialInfo(key=key, arm=row["arm"], seed=int(row["seed"]),
                                     config=config, backbone=row["backbone"], tags=tags or {}))
        curve = curves.get(key)
        if curve is not None:
            for rec in curve.drop(columns=["trial_key"]).to_dict("records"):
                epoch = int(rec.pop("epoch"))
                node = rec.pop("node", None)
                values = {k: x for k, v in rec.items() if (x := _number(v)) is not None}
                sink.epoch(key, epoch, values, node=node if isinstance(node, str) else "")
                n_epochs += 1
        final = json.loads(row["final_metrics"]) if isinstance(row["final_metrics"], str) else {}
        best = _number(row.get("metric_best"))
        sink.trial_finished(TrialOutcome(
            key=key, status=row["status"], stop_reason=row["stop_reason"],
            epochs_run=int(row["epochs_run"]), wall_time_s=float(row["wall_time_s"]),
            final={k: x for k, v in (final or {}).items() if (x := _number(v)) is not None},
            best={sweep.metric: best} if best is not None else {},
            params=None if _number(row.get("params")) is None else int(row["params"]),
            macs=None if _number(row.get("macs")) is None else int(row["macs"]),
        ))
    sink.finish(interrupted=False)
    report = sweep_dir / "report"
    if report.is_dir() and any(report.iterdir()):
        log_report(uri, sweep.name, report)
    return SyncResult(tracking_uri=uri, experiment=sweep.name, trials=len(sweep.trials),
                      epochs=n_epochs)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.sync",
        description="Bring MLflow up to date from a sweep's Parquet tables.")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR",
                   help="run.storage/NAME, e.g. sweeps/quickstart")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else the sweep's "
                        "sqlite store beside it)")
    args = p.parse_args(argv)
    try:
        result = sync(args.sweep_dir, args.tracking_uri)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the store itself failed: say what, exit 1
        print(f"MLflow sync failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"synced {result.trials} trials and {result.epochs} epochs of {result.experiment} "
          f"to {result.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

