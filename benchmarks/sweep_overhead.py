"""Orchestration overhead: the sweep runner (MLflow + Parquet + progress sinks) vs bare Ray Tune.

Both sides run the same trials (the same planned grid of `orchestrator.tune.trainable.run_trial`,
the same resources, concurrency and `reuse_actors`) in one Ray session, alternating bare /
orchestrated so that a slow period of a shared machine hits both. Tune's auto
CSV/JSON/TensorBoard loggers are off on both sides (the runner switches them off), so the
difference is what the orchestrator adds.

Measured per run:
- wall: bare = building the Tuner + `fit()`; orchestrated = the whole `run_sweep()` call (storage
  checks, sink setup incl. the MLflow import and database, every sink event, final flush);
- first start: seconds from that start to the first trial starting (the fixed set-up cost);
- slot gap: mean seconds between a trial finishing and the queued trial that takes its slot
  starting (the per-trial scheduling latency the sinks add to the driver loop);
- CPU: busy fraction of the machine's cores from /proc/stat (the whole machine: others' load
  counts too); CPU seconds of this process tree (driver + raylet + workers,
  sampled every 0.5 s) and that per wall second and core; CPU seconds of the driver process alone
  (where the sinks run).

Every sink call of the orchestrated runs is also timed (wall and CPU seconds it blocks the
driver), which isolates the sinks' cost from the noise of a shared machine.

Run: `python benchmarks/sweep_overhead.py [--repeats 2] [--epochs 6] [--seeds 2]`; prints a
Markdown table and the overhead ratio.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # as the runner sets it: no Tune console tables

from ray import tune

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -------------------------------------------------------------------------------- CPU accounting
def _system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from the first line of /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)   # idle + iowait
    total = sum(fields[:8])                                        # guest time is inside user
    return total - idle, total


def _tree_ticks(root: int) -> dict[int, float]:
    """{pid: user + system jiffies} of `root` and its living descendants (/proc/<pid>/stat)."""
    parent: dict[int, int] = {}
    ticks: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid ... utime(11) stime(12).
        rest = raw[raw.rindex(")") + 2:].split()
        parent[int(entry)] = int(rest[1])
        ticks[int(entry)] = float(rest[11]) + float(rest[12])
    keep, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in keep:
                keep.add(child)
                frontier.append(child)
    return {pid: ticks[pid] for pid in keep if pid in ticks}


class _TreeSampler:
    """CPU seconds of this process tree, sampled every `period` s by a thread.

    Sampling, not cumulative child times: the raylet does not account its exited workers to
    itself, so a Ray worker's CPU is only visible while it lives. A process that starts and
    ends between two samples is missed; trial workers live for the whole run.
    """

    def __init__(self, period: float = 0.5) -> None:
        self.base = _tree_ticks(os.getpid())
        self.last = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(period,), daemon=True)
        self._thread.start()

    def _loop(self, period: float) -> None:
        while not self._stop.wait(period):
            self.last.update(_tree_ticks(os.getpid()))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.last.update(_tree_ticks(os.getpid()))
        return sum(t - self.base.get(pid, 0.0) for pid, t in self.last.items()) / CLK_TCK


def _driver_cpu_s() -> float:
    """This process's own user + system CPU seconds (all its threads, no child processes)."""
    t = os.times()
    return t.user + t.system


class _Meter:
    """Wall clock and CPU of one run, plus the trial start / finish times it is told about."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.sys0 = _system_cpu()
        self.tree = _TreeSampler()
        self.driver0 = _driver_cpu_s()
        self.starts: list[float] = []
        self.ends: list[float] = []

    def started(self) -> None:
        self.starts.append(time.monotonic() - self.t0)

    def finished(self) -> None:
        self.ends.append(time.monotonic() - self.t0)

    def stop(self, concurrency: int) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        busy1, total1 = _system_cpu()
        tree = self.tree.stop()
        driver = _driver_cpu_s() - self.driver0
        cores = os.cpu_count() or 1
        ends, starts = sorted(self.ends), sorted(self.starts)
        # The k-th queued trial (k >= concurrency) waits for the (k - concurrency)-th finish.
        gaps = [s - ends[k - concurrency] for k, s in enumerate(starts)
                if k >= concurrency and k - concurrency < len(ends)]
        return {
            "wall_s": wall,
            "first_start_s": starts[0] if starts else float("nan"),
            "slot_gap_s": statistics.fmean(gaps) if gaps else float("nan"),
            "system_busy": (busy1 - self.sys0[0]) / max(1.0, total1 - self.sys0[1]),
            "tree_busy": tree / (wall * cores),
            "tree_cpu_s": tree,
            "driver_cpu_s": driver,
            "trials": len(self.ends),
        }


# ------------------------------------------------------------------------------ the two runners
def _spec(name: str, storage: str, epochs: int, seeds: int, steps: int) -> Any:
    from orchestrator.spec import SweepSpec

    return SweepSpec.model_validate({
        "name": name,
        "base": {
            "model": {"backbone": "localvit_micro"},
            "data": {"name": "digits"},
            "train": {"epochs": epochs, "batch_size": 64, "steps_per_epoch": steps,
                      "warmup_epochs": 0, "ema": False, "amp": False},
            "aug": {"auto_augment": None, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0},
            "device": "cpu",
        },
        "axes": {"model.locality.act": ["hs"]},      # baseline + one arm
        "seeds": list(range(seeds)),
        "run": {"resources_per_trial": {"cpu": 1}, "max_concurrent": 2, "storage": storage},
    })


def run_bare(plan: Any, storage: str) -> dict[str, float]:
    """The same trainable, grid and Tune settings, without the orchestrator's callback/sinks."""
    from ray import tune

    from orchestrator.tune.trainable import run_trial
    from orchestrator.tune.tuner import param_space

    global _METER
    meter = _METER = _Meter()

    spec = plan.spec
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(run_trial, configs=plan.configs),
            {"cpu": spec.run.resources_per_trial.cpu}),
        param_space=param_space(plan),
        tune_config=tune.TuneConfig(metric=spec.search.metric, mode=spec.search.mode,
                                    max_concurrent_trials=spec.run.max_concurrent,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=spec.name, storage_path=storage, verbose=0,
                                  callbacks=[_TimingCallback()]),
    )
    grid = tuner.fit()
    assert grid.num_errors == 0, "a bare trial failed"
    return meter.stop(spec.run.max_concurrent)


# The meter of the run in progress. A module global, not an attribute of the callbacks: Tune
# pickles callbacks (by reference to this module, see the __main__ block), never a live meter.
_METER: _Meter | None = None


class _TimingCallback(tune.Callback):
    """For the bare runs: trial start / finish times, from the same Tune hooks the runner uses."""

    def on_trial_start(self, iteration, trials, trial, **info):
        _METER.started()

    def on_trial_complete(self, iteration, trials, trial, **info):
        _METER.finished()


class _TimingSink:
    """Last in the sink list, so its timestamps include the time the real sinks took."""

    def start(self, **kwargs: Any) -> None: ...
    def epoch(self, key, epoch, metrics, node="", restored=False) -> None: ...
    def finish(self, *, interrupted: bool = False) -> None: ...

    def trial_started(self, info) -> None:
        _METER.started()

    def trial_finished(self, outcome) -> None:
        _METER.finished()


class _Timed:
    """Wraps a sink; adds up the wall and CPU seconds its calls block the driver, per sink."""

    totals: dict[str, list[float]] = {}     # sink name -> [wall s, thread CPU s, calls]

    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self._name = type(sink).__name__
        _Timed.totals.setdefault(self._name, [0.0, 0.0, 0])

    def __getattr__(self, method: str) -> Any:
        fn = getattr(self._sink, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            w, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                tot = _Timed.totals[self._name]
                tot[0] += time.perf_counter() - w
                tot[1] += time.thread_time() - c
                tot[2] += 1
        return timed


def _bench_sinks(tracking_uri: str) -> list:
    from rich.console import Console

    from orchestrator.sinks.mlflow import MlflowSink
    from orchestrator.sinks.parquet import ParquetSink
    from orchestrator.sinks.progress import ProgressSink

    # The progress view renders its lines as on a CI log, into memory instead of the terminal.
    console = Console(file=io.StringIO(), force_terminal=False)
    sinks = [ParquetSink(), MlflowSink(tracking_uri=tracking_uri), ProgressSink(console=console)]
    return [*(_Timed(s) for s in sinks), _TimingSink()]


def run_orchestrated(plan: Any) -> dict[str, float]:
    from orchestrator.tune.runner import run_sweep

    global _METER
    meter = _METER = _Meter()
    _Timed.totals.clear()
    result = run_sweep(plan, sink_factory=_bench_sinks)
    assert result.exit_code == 0, f"orchestrated sweep failed: {result.sink_errors}"
    out = meter.stop(plan.spec.run.max_concurrent)
    for name, (wall, cpu, _calls) in _Timed.totals.items():
        out[f"{name}_wall_s"], out[f"{name}_cpu_s"] = wall, cpu
    out["sinks_wall_s"] = sum(t[0] for t in _Timed.totals.values())
    return out


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per epoch")
    args = ap.parse_args(argv)

    import ray

    from orchestrator.plan import build_plan

    root = tempfile.mkdtemp(prefix="sweep-overhead-")
    t = time.monotonic()
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.monotonic() - t:.1f} s; {os.cpu_count()} cores; storage {root}",
          file=sys.stderr)
    rows = []
    for i in range(args.repeats):
        for side in ("bare", "orchestrated"):
            spec = _spec(f"overhead-{side}-{i}", f"{root}/sweeps", args.epochs, args.seeds,
                         args.steps)
            plan = build_plan(spec, source="sweep_overhead.py")
            res = (run_bare(plan, f"{root}/bare") if side == "bare"
                   else run_orchestrated(plan))
            rows.append((side, i, res))
            print(f"{side} #{i}: " + ", ".join(f"{k}={v:.3f}" for k, v in res.items()),
                  file=sys.stderr)
    ray.shutdown()

    print("| run | wall s | first trial start s | slot gap s | machine busy | "
          "tree CPU s (busy) | driver CPU s |")
    print("|---|---|---|---|---|---|---|")
    for side, i, r in rows:
        print(f"| {side} #{i} | {r['wall_s']:.1f} | {r['first_start_s']:.2f} | "
              f"{r['slot_gap_s']:.3f} | {r['system_busy']:.0%} | "
              f"{r['tree_cpu_s']:.1f} ({r['tree_busy']:.0%}) | {r['driver_cpu_s']:.1f} |")

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for s, _, r in rows if s == side)

    orch = [r for s, _, r in rows if s == "orchestrated"]
    print("\n| run | sinks blocking the driver, s | ParquetSink s | MlflowSink s (CPU s) "
          "| ProgressSink s | sinks / bare wall |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(orch):
        print(f"| orchestrated #{i} | {r['sinks_wall_s']:.2f} | {r['ParquetSink_wall_s']:.2f} | "
              f"{r['MlflowSink_wall_s']:.2f} ({r['MlflowSink_cpu_s']:.2f}) | "
              f"{r['ProgressSink_wall_s']:.3f} | {r['sinks_wall_s'] / med('bare', 'wall_s'):.1%} |")
    pairs = [o["wall_s"] / b["wall_s"]
             for (_, _, b), (_, _, o) in zip(rows[::2], rows[1::2], strict=True)]
    print("\nwall ratio per (bare, orchestrated) pair: "
          + ", ".join(f"{p:.3f}" for p in pairs))
    ratio = med("orchestrated", "wall_s") / med("bare", "wall_s")
    print(f"\nmedian wall: bare {med('bare', 'wall_s'):.1f} s, orchestrated "
          f"{med('orchestrated', 'wall_s'):.1f} s, ratio {ratio:.3f} "
          f"(overhead {ratio - 1:+.1%}); median slot gap: bare {med('bare', 'slot_gap_s'):.3f} s,"
          f" orchestrated {med('orchestrated', 'slot_gap_s'):.3f} s")
    return 0


if __name__ == "__main__":
    # Run as the importable module, so that Tune pickles this file's callbacks and sink factory
    # by reference instead of by value (with a live meter and its sampling thread).
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sweep_overhead

    sys.exit(sweep_overhead.main())
