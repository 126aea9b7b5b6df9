"""What one trial costs the driver in MLflow writes: the calls the MLflow sink makes per trial,
each timed (wall and CPU of this process) against a sweep-like SQLite store.

Per trial, as `orchestrator.sinks.mlflow.MlflowSink` does it: the child run created with its
tags; the flattened config as params, in batches of 100 (MLflow's limit); the `ray.nodes` tag;
the epochs in two timer batches; the end's metrics and tags; the run set terminated. The store
is made as a sweep makes it (`create_sqlite_store`), so its build is not counted.

Run: `python benchmarks/mlflow_calls.py [--trials 30] [--params 45] [--epochs 6]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--params", type=int, default=45,
                    help="flattened config keys per trial (sweep_overhead.py's trials: 45)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--metrics", type=int, default=9, help="metrics logged per epoch")
    args = ap.parse_args(argv)

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from orchestrator.sinks.mlflow_store import create_sqlite_store, quiet_mlflow

    quiet_mlflow()
    db = Path(tempfile.mkdtemp(prefix="mlflow-calls-")) / "mlflow.db"
    create_sqlite_store(db)
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.create_experiment("calls")
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    cost: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])   # wall s, CPU s, calls

    def timed(name: str, fn, *a, **kw):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*a, **kw)
        entry = cost[name]
        entry[0] += time.perf_counter() - wall
        entry[1] += time.process_time() - cpu
        entry[2] += 1
        return out

    half = max(1, args.epochs // 2)
    for i in range(args.trials):
        tags = {**{f"tag{j}": "x" for j in range(10)}, "mlflow.parentRunId": parent}
        run_id = timed("create_run", client.create_run, experiment, run_name=f"arm/seed{i}",
                       tags=tags).info.run_id
        params = [Param(f"cfg.key{j}", str(j)) for j in range(args.params)]
        for k in range(0, len(params), 100):
            timed("log_batch: params (<= 100)", client.log_batch, run_id,
                  params=params[k:k + 100])
        timed("set_tag: ray.nodes", client.set_tag, run_id, "ray.nodes", "10.0.0.1:aaaa")
        now = int(time.time() * 1000)
        for start in range(0, args.epochs, half):
            batch = [Metric(f"metric{j}", 0.5, now, epoch) for j in range(args.metrics)
                     for epoch in range(start + 1, min(args.epochs, start + half) + 1)]
            timed(f"log_batch: {half} epochs' metrics", client.log_batch, run_id, metrics=batch)
        timed("log_batch: end metrics + tags", client.log_batch, run_id,
              metrics=[Metric(f"end{j}", 1.0, now, 0) for j in range(4)],
              tags=[RunTag(k, "x") for k in ("status", "stop_reason", "epochs_run")])
        timed("set_terminated", client.set_terminated, run_id, "FINISHED")

    print(f"{args.trials} trials, {args.params} params, {args.epochs} epochs x "
          f"{args.metrics} metrics each\n")
    print("| call | calls per trial | wall ms per call | CPU ms per call |")
    print("|---|---|---|---|")
    total = 0.0
    for name, (wall, cpu, n) in cost.items():
        total += cpu
        print(f"| {name} | {n / args.trials:g} | {1000 * wall / n:.1f} | {1000 * cpu / n:.1f} |")
    print(f"\nCPU per trial: {1000 * total / args.trials:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
