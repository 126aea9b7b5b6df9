"""The micro sweep of `gpu_check.py`: its spec, its command, and the check of what it recorded.

The sweep is search_spaces/quickstart.yaml (LocalViT-micro, its ReLU6 variant and ViT-micro on
digits) changed by `--set` only, the way a user would run it on a GPU: each trial asks Ray for a
fraction of the GPU (`run.resources_per_trial: {cpu, gpu}`), trains on `device: cuda` with
`train.amp: true`, for a few short epochs, with arm-level ASHA at every epoch so that paused
seeds are resumed from their checkpoints on the GPU too.

`verify_sweep` reads back what the finished sweep left: every planned trial must have a row in
trials.parquet and exactly one child run in the MLflow store, every epoch the trainer reported
must be in epochs.parquet and in the run's metric history, and each epoch's `train/cuda` and
`train/amp` (what the trainer resolved: 1.0 when the epoch trained on a CUDA device, 1.0 when
mixed precision was on) must be what the check expects. It returns the problems it found as
sentences, so the same function checks a GPU sweep (expect 1.0) and a CPU sweep (expect 0.0).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"
SWEEP_NAME = "gpu_check"
# The trainer's per-epoch record of where it trained (trainers/train: `_epoch`).
CUDA_METRIC, AMP_METRIC = "train/cuda", "train/amp"
FINISHED = ("completed", "stopped")


def sweep_sets(storage: str | Path, *, name: str = SWEEP_NAME, gpu: float = 0.25,
               cpus: int = 2, device: str = "cuda", amp: bool = True,
               seeds: Sequence[int] = (0, 1), epochs: int = 3, steps_per_epoch: int = 8,
               max_concurrent: int = 4) -> list[str]:
    """The `--set` overrides that turn the quick start into the GPU check's micro sweep.

    Defaults: 3 arms x 2 seeds, 3 epochs of 8 steps, 4 trials at a time on a quarter GPU and 2
    CPUs each, ASHA rungs at epochs 1 and 2 (the quick start's grace of 5 exceeds 3 epochs)."""
    return [
        f"name={name}",
        f"run.storage={Path(storage)}",
        f"run.resources_per_trial={{cpu: {cpus}, gpu: {gpu:g}}}",
        f"run.max_concurrent={max_concurrent}",
        f"base.device={device}",
        f"base.train.amp={'true' if amp else 'false'}",
        f"base.train.epochs={epochs}",
        f"base.train.warmup_epochs={min(1, epochs - 1)}",
        f"base.train.steps_per_epoch={steps_per_epoch}",
        f"seeds=[{', '.join(str(s) for s in seeds)}]",
        "search.scheduler.asha.grace_period=1",
    ]


def sweep_command(sets: Sequence[str], spec: str | Path = QUICKSTART) -> list[str]:
    """`python -m orchestrator.sweep SPEC --set ...`, as a user would type it."""
    return [sys.executable, "-m", "orchestrator.sweep", str(spec),
            *(part for item in sets for part in ("--set", item))]


def planned_trials(sets: Sequence[str], spec: str | Path = QUICKSTART) -> dict[str, str]:
    """Trial key -> `arm/seed<k>` of every trial the sweep plans (the same plan its driver
    builds from the same spec and overrides)."""
    from orchestrator.plan import build_plan
    from orchestrator.spec import load_spec

    plan = build_plan(load_spec(spec, list(sets)), source=Path(spec).name)
    return {t.key: f"{t.arm}/seed{t.seed}" for t in plan.trials}


@dataclass
class SweepRun:
    exit_code: int
    seconds: float
    log: Path


def run_sweep_cli(sets: Sequence[str], log: Path, *, timeout_s: float,
                  spec: str | Path = QUICKSTART) -> SweepRun:
    """Run the sweep as a separate process from the repository root, its output to `log`.

    PYTHONPATH puts this checkout first, for the driver and for the Ray workers it starts (they
    inherit its environment), so the sweep runs the code under test, not another install."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        try:
            code = subprocess.run(sweep_command(sets, spec), cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\ngpu_check: the sweep did not finish within {timeout_s:g} s\n")
            code = -1
    return SweepRun(code, time.perf_counter() - start, log)


@dataclass
class Verification:
    trials: int = 0                   # planned trials found in trials.parquet
    mlflow_runs: int = 0              # planned trials with their MLflow run
    epochs: int = 0                   # epoch rows checked in epochs.parquet
    statuses: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _flag(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _check_epochs(where: str, values: Mapping[str, Mapping[int, float | None]],
                  epochs_run: int, expect: Mapping[str, float]) -> list[str]:
    """Each metric of `expect` present at epochs 1..epochs_run with the expected value."""
    problems = []
    wanted = set(range(1, epochs_run + 1))
    for metric, value in expect.items():
        got = values.get(metric, {})
        if set(got) != wanted:
            problems.append(f"{where}: {metric} at epochs {sorted(got)}, expected "
                            f"{sorted(wanted)}")
        wrong = sorted(e for e, v in got.items() if v != value)
        if wrong:
            problems.append(f"{where}: {metric} is not {value:g} at epochs {wrong} "
                            f"({[got[e] for e in wrong]})")
    return problems


def verify_sweep(sweep_dir: str | Path, planned: Mapping[str, str], *, cuda: bool, amp: bool,
                 tracking_uri: str | None = None) -> Verification:
    """Check a finished sweep's Parquet tables and MLflow runs against its plan (see the module
    docstring). `cuda` / `amp`: whether every epoch must have trained on a CUDA device / with
    mixed precision (and `train.amp` be on in every trial's config) or none may."""
    from mlflow import MlflowClient

    from orchestrator.sinks.mlflow_store import default_tracking_uri
    from orchestrator.sinks.parquet import read_epochs, read_trials

    sweep_dir = Path(sweep_dir)
    out = Verification()
    expect = {CUDA_METRIC: float(cuda), AMP_METRIC: float(amp)}
    try:
        trials = read_trials(sweep_dir)
        epochs = read_epochs(sweep_dir)
    except FileNotFoundError as exc:
        out.problems.append(f"Parquet: {exc}")
        return out
    rows = {r["trial_key"]: r for r in trials.to_dict("records")}
    for key in sorted(set(planned) - set(rows)):
        out.problems.append(f"Parquet: trial {planned[key]} ({key}) has no row in trials.parquet")
    for key in sorted(set(rows) - set(planned)):
        out.problems.append(f"Parquet: trial {key} in trials.parquet is not in the plan")
    curves: dict[str, dict[str, dict[int, float | None]]] = {}
    for rec in epochs.to_dict("records"):
        per_metric = curves.setdefault(rec["trial_key"], {})
        for metric in expect:
            per_metric.setdefault(metric, {})[int(rec["epoch"])] = _flag(rec.get(metric))
    found = [k for k in planned if k in rows]
    out.trials = len(found)
    for key in found:
        row, who = rows[key], f"Parquet: trial {planned[key]}"
        out.statuses[row["status"]] = out.statuses.get(row["status"], 0) + 1
        if row["status"] not in FINISHED:
            out.problems.append(f"{who}: status {row['status']} ({row['stop_reason']})")
        if row.get("config.train.amp") is not amp:
            out.problems.append(f"{who}: config train.amp is {row.get('config.train.amp')!r}")
        n = int(row["epochs_run"])
        out.epochs += len(curves.get(key, {}).get(CUDA_METRIC, {}))
        out.problems += _check_epochs(who, curves.get(key, {}), n, expect)

    names = set(trials["sweep"].dropna()) if "sweep" in trials else set()
    name = names.pop() if len(names) == 1 else sweep_dir.name
    uri = tracking_uri or default_tracking_uri(sweep_dir.parent)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        out.problems.append(f"MLflow: no experiment {name!r} in {uri}")
        return out
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], "tags.sweep_role = 'trial'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    by_key: dict[str, list] = {}
    for run in runs:
        by_key.setdefault(run.data.tags.get("trial_key", ""), []).append(run)
    for key in sorted(planned):
        who = f"MLflow: trial {planned[key]}"
        got = by_key.get(key, [])
        if len(got) != 1:
            out.problems.append(f"{who}: {len(got)} runs with trial_key {key}, expected 1")
            continue
        run = got[0]
        out.mlflow_runs += 1
        if run.info.status != "FINISHED":
            out.problems.append(f"{who}: run status {run.info.status}")
        row = rows.get(key)
        if row is not None and run.data.tags.get("status") != row["status"]:
            out.problems.append(f"{who}: status tag {run.data.tags.get('status')!r}, Parquet "
                                f"says {row['status']!r}")
        if run.data.params.get("train.amp") != ("true" if amp else "false"):
            out.problems.append(f"{who}: param train.amp is {run.data.params.get('train.amp')!r}")
        history = {m: {h.step: _flag(h.value)
                       for h in client.get_metric_history(run.info.run_id, m)} for m in expect}
        n = int(row["epochs_run"]) if row is not None else len(history[CUDA_METRIC])
        out.problems += _check_epochs(who, history, n, expect)
    return out
