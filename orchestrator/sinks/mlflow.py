"""The MLflow sink: one experiment per sweep, a parent run for the sweep, one child run per trial.

Only the driver talks to MLflow (one writer: no SQLite lock contention, no duplicate runs), through
an explicit `MlflowClient` and run ids, never the fluent active-run stack. Layout:

- experiment = sweep name; parent run named after the sweep, tagged `sweep_role=parent`, with the
  resolved spec as the artifact `spec.yaml` and the versions / git commit as tags;
- child run per trial, named `<arm>/seed<k>`, nested under the parent (`mlflow.parentRunId`),
  tagged `trial_key`, `arm`, `seed`, `backbone`, `status`, `stop_reason`, `epochs_run`; the
  trial config flattened into dotted params (`model.locality.act`); every reported metric per
  epoch with step = epoch; `params`, `macs`, `wall_time_s` and `best/<metric>` once at the end.

ASHA ends a trial by stopping it, which MLflow would record as FINISHED like a completed one: the
`status` tag (completed | stopped | failed) and `stop_reason` say which it was.

The MLflow calls run in order on one background thread (`orchestrator.sinks.background`), so the
import, the database set-up and every write overlap with the trials instead of holding up Tune's
scheduling loop; `finish()` waits for them, and the first MLflow error is raised from the next
call (the runner then reports it). `background=False` makes every call synchronous. Epochs are
the frequent event: the worker logs the ones that arrived every `epoch_flush_s` seconds (5), one
`log_batch` per run, and before a trial's end is logged, so the UI is at most that far behind
while the tracking store takes a few writes per trial instead of one per epoch (each a SQLite
transaction: a sweep of short epochs spent more of the driver's CPU on them than on the rest).

Idempotent across `--resume`: `start()` finds the sweep's parent run by its tags and the existing
child runs by their `trial_key` tag and reuses them; an epoch already in a reused run's history is
not logged twice. So a trial key always has exactly one child run.

For the web UI, `start()` also tags the experiment as model training and saves the "Trials by arm"
view (see `orchestrator.sinks.mlflow_view`); `sweep_browse_url` builds the link that opens it.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator._flatten import encode_value, flatten_config
from orchestrator._provenance import provenance, spec_yaml_text
from orchestrator.layout import SPEC_FILE
from orchestrator.sinks import mlflow_view
from orchestrator.sinks.background import SerialWorker
from orchestrator.sinks.base import FinishedTrial, TrialInfo, TrialOutcome
from orchestrator.sinks.mlflow_store import (
    ARTIFACTS_DIR,
    ROLE_TAG,
    SWEEP_TAG,
    create_sqlite_store,
    default_tracking_uri,
    quiet_mlflow,
    sqlite_path,
)

__all__ = ["MlflowSink"]


# MLflow's batch and value limits (mlflow.utils.validation).
_MAX_PARAMS_PER_BATCH = 100


_MAX_METRICS_PER_BATCH = 1000


_MAX_PARAM_LEN = 6000


_MAX_TAG_LEN = 8000


_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")


# Trial-level values the trainer may also report every epoch; one MLflow point each is enough.
_ONCE = ("params", "macs")


def _metric_name(name: str) -> str:
    """A metric name MLflow accepts: allowed characters only, no path that normalises away."""
    clean = _BAD_NAME_CHARS.sub("_", str(name))
    clean = posixpath.normpath(clean).lstrip("/") if clean else "_"
    return clean if clean not in ("", ".", "..") else "_"


def _param_value(value: Any) -> str:
    """Strings as they are, anything else as JSON (`0.001`, `null`, `[1, 2]`), within the limit."""
    return (value if isinstance(value, str) else encode_value(value))[:_MAX_PARAM_LEN]


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class MlflowSink:
    """Records a sweep in MLflow from the driver. Nothing MLflow is created before `start()`."""

    def __init__(self, tracking_uri: str | None = None, background: bool = True,
                 epoch_flush_s: float = 5.0) -> None:
        self.tracking_uri = tracking_uri
        self.background = background
        self.epoch_flush_s = epoch_flush_s
        self._worker: SerialWorker | None = None
        # Epochs reported and not yet logged: (trial key, epoch, metrics, node, time in ms).
        self._epochs: list[tuple[str, int, dict[str, Any], str, int]] = []
        self._epochs_lock = threading.Lock()
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._client: Any = None
        self._metric = ""
        self._sweep = ""
        self._runs: dict[str, str] = {}              # trial key -> child run id
        self._has_params: set[str] = set()           # run ids whose params are already logged
        self._reused: set[str] = set()               # run ids found from an earlier driver
        self._logged_upto: dict[str, int] = {}       # run id -> last epoch already in MLflow
        self._nodes: dict[str, list[str]] = {}       # run id -> the Ray nodes it ran on, in order
        self._open: set[str] = set()                 # trial keys started and not finished here
        self._finished: set[str] = set()             # trial keys finished by this driver
        # trial key -> (run status, `status` tag, `epochs_run` tag) of an earlier driver's run
        self._found: dict[str, tuple[str, str, str]] = {}

    # -- Sink protocol: queue the call for the worker thread --------------------------------------
    def start(self, *, sweep_name: str, storage_dir: str, spec: Mapping[str, Any],
              metric: str, mode: str, total_trials: int | None,
              prior: Sequence[FinishedTrial] = ()) -> None:
        # (`prior`: this sink keeps its own record of earlier drivers' trials.)
        if self.tracking_uri is None:
            # storage_dir is the sweep's own folder <storage>/<name>/; the store is shared.
            self.tracking_uri = default_tracking_uri(Path(storage_dir).resolve().parent)
        self._worker = SerialWorker("MlflowSink", background=self.background,
                                    tick=self._log_epochs, tick_s=self.epoch_flush_s)
        self._worker.submit(self._start, sweep_name, dict(spec), metric, mode, total_trials)

    def trial_started(self, info: TrialInfo) -> None:
        self._require_worker().submit(self._trial_started, info)

    def epoch(self, key: str, epoch: int, metrics: Mapping[str, float], node: str = "",
              restored: bool = False) -> None:
        worker = self._require_worker()
        worker.raise_error()
        with self._epochs_lock:
            self._epochs.append((key, int(epoch), dict(metrics), node, int(time.time() * 1000)))
        if not self.background:
            worker.submit(self._log_epochs)

    def trial_finished(self, outcome: TrialOutcome) -> None:
        self._require_worker().submit(self._trial_finished, outcome)

    def finish(self, *, interrupted: bool = False) -> None:
        """Log everything still queued (this may take a moment after a long backlog), then end."""
        worker = self._worker
        if worker is None:
            return
        with contextlib.suppress(RuntimeError):  # an earlier MLflow call failed: close() raises it
            worker.submit(self._finish, interrupted)
        worker.close()

    def _require_worker(self) -> SerialWorker:
        if self._worker is None:
            raise RuntimeError("MlflowSink.start() must be called before trial events")
        return self._worker

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("MlflowSink has no parent run: its start() did not complete")
        return self.parent_run_id

    def holds(self, key: str, status: str, epochs_run: int) -> bool:
        """Whether the store (as `start` found it) has the trial's run ended with this status and
        these epochs: a replay would only touch it again (its end time), so `sync` leaves it."""
        found = self._found.get(key)
        return found is not None and found[0] in ("FINISHED", "FAILED") \
            and found[1:] == (status, str(epochs_run))

    # -- the MLflow calls, on the worker thread ---------------------------------------------------
    # MLflow is imported in these methods, on the worker thread, so that its import (seconds)
    # overlaps with the trials instead of delaying the driver's start.
    def _start(self, sweep_name: str, spec: Mapping[str, Any], metric: str, mode: str,
               total_trials: int | None) -> None:
        from mlflow import MlflowClient

        quiet_mlflow()
        assert self.tracking_uri is not None, "start() sets it before queueing this call"
        db = sqlite_path(self.tracking_uri)
        if db is not None:
            create_sqlite_store(db)
        self._client = client = MlflowClient(tracking_uri=self.tracking_uri)
        self._metric, self._sweep = metric, sweep_name

        exp = client.get_experiment_by_name(sweep_name)
        if exp is None:
            artifacts = (db.parent / ARTIFACTS_DIR / sweep_name).as_uri() if db else None
            ui_tags = mlflow_view.experiment_tags(_metric_name(metric), mode)
            self.experiment_id = client.create_experiment(
                sweep_name, artifact_location=artifacts,
                tags={SWEEP_TAG: sweep_name, **ui_tags},
            )
        else:
            self.experiment_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            # The UI tags name the metric, which a resumed sweep may have changed.
            for key, value in mlflow_view.experiment_tags(
                    _metric_name(metric), mode, exp.tags).items():
                client.set_experiment_tag(self.experiment_id, key, value)

        prov = provenance()
        # Compared here, not in the filter string, so a quote in the name cannot break the query.
        parent = [r for r in self._search(f"tags.{ROLE_TAG} = 'parent'")
                  if r.data.tags.get(SWEEP_TAG) == sweep_name]
        tags = {
            SWEEP_TAG: sweep_name, ROLE_TAG: "parent", "metric": metric, "mode": mode,
            "total_trials": str(total_trials), "sweep_status": "running",
            "git_commit": str(prov["git_commit"]),
            **{f"version.{k}": str(v) for k, v in prov["versions"].items()},
        }
        if prov["git_commit"]:
            tags["mlflow.source.git.commit"] = str(prov["git_commit"]).removesuffix("-dirty")
        if parent:
            self.parent_run_id = parent[0].info.run_id
            client.update_run(self.parent_run_id, status="RUNNING")
            self._set_tags(self.parent_run_id, tags)
        else:
            run = client.create_run(self.experiment_id, run_name=sweep_name, tags=tags)
            self.parent_run_id = run.info.run_id
        client.log_text(self.parent_run_id, spec_yaml_text(spec, prov), SPEC_FILE)

        # One run per trial key: should a store hold two, the earliest is the trial's.
        for run in sorted(self._search(f"tags.{ROLE_TAG} = 'trial'"),
                          key=lambda r: r.info.start_time or 0):
            key = run.data.tags.get("trial_key")
            if key and key not in self._runs:
                self._runs[key] = run.info.run_id
                self._reused.add(run.info.run_id)
                self._found[key] = (run.info.status, run.data.tags.get("status", ""),
                                    run.data.tags.get("epochs_run", ""))
                if run.data.params:
                    self._has_params.add(run.info.run_id)

    def _trial_started(self, info: TrialInfo) -> None:
        client = self._client
        tags = {
            **{str(k): str(v) for k, v in info.tags.items()},
            "mlflow.parentRunId": self._require_parent(), SWEEP_TAG: self._sweep,
            ROLE_TAG: "trial", "trial_key": info.key, "arm": info.arm, "seed": str(info.seed),
            "backbone": info.backbone, "status": "running", "stop_reason": "",
        }
        run_id = self._runs.get(info.key)
        if run_id is None:
            run = client.create_run(
                self.experiment_id, run_name=f"{info.arm}/seed{info.seed}", tags=tags
            )
            run_id = self._runs[info.key] = run.info.run_id
        else:
            client.update_run(run_id, status="RUNNING")
            self._set_tags(run_id, tags)
        if run_id not in self._has_params:
            from mlflow.entities import Param

            params = [Param(k, _param_value(v)) for k, v in flatten_config(info.config).items()]
            for chunk in _chunks(params, _MAX_PARAMS_PER_BATCH):
                client.log_batch(run_id, params=chunk)
            self._has_params.add(run_id)
        self._open.add(info.key)

    def _log_epochs(self, *, strict: bool = False) -> None:
        """Log the epochs that arrived, one batch per run. An epoch whose trial has no run yet
        (its start is still queued behind this call) waits for the next call; `strict` (the end
        of the sweep) raises for one instead."""
        from mlflow.entities import Metric

        with self._epochs_lock:
            ready = [e for e in self._epochs if e[0] in self._runs]
            self._epochs = [e for e in self._epochs if e[0] not in self._runs]
        if strict and self._epochs:
            self._run_of(self._epochs[0][0])      # raises: the trial was never started
        batches: dict[str, list[Metric]] = {}
        for key, epoch, metrics, node, when in ready:
            run_id = self._runs[key]
            self._note_node(run_id, node)
            if epoch <= self._already_logged(run_id):
                # A retried trial reports its epochs again: MLflow would keep both points.
                continue
            batch = batches.setdefault(run_id, [])
            for name, value in metrics.items():
                if name in _ONCE:
                    continue  # constant per trial: logged once, when the trial finishes
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    try:
                        value = float(value)
                    except (TypeError, ValueError):
                        continue
                batch.append(Metric(_metric_name(name), float(value), when, epoch))
            self._logged_upto[run_id] = epoch
        for run_id, batch in batches.items():
            for chunk in _chunks(batch, _MAX_METRICS_PER_BATCH):
                self._client.log_batch(run_id, metrics=chunk)

    def _note_node(self, run_id: str, node: str) -> None:
        """Where the trial ran, in order (a retry after a lost node moves it to another)."""
        if run_id not in self._nodes:
            earlier = self._client.get_run(run_id).data.tags.get("ray.nodes", "") \
                if run_id in self._reused else ""
            self._nodes[run_id] = earlier.split()
        nodes = self._nodes[run_id]
        if node and node not in nodes:
            nodes.append(node)
            self._client.set_tag(run_id, "ray.nodes", " ".join(nodes))

    def _trial_finished(self, outcome: TrialOutcome) -> None:
        from mlflow.entities import Metric, RunTag

        self._log_epochs()
        client = self._client
        run_id = self._run_of(outcome.key)
        now = int(time.time() * 1000)
        values: dict[str, float | int | None] = {
            "params": outcome.params, "macs": outcome.macs, "wall_time_s": outcome.wall_time_s,
            f"best/{self._metric}": outcome.best.get(self._metric),
        }
        logged: Mapping[str, float] = {}
        if run_id in self._reused or outcome.key in self._finished:
            # A replayed finish: a value already there would become a second point.
            logged = client.get_run(run_id).data.metrics
        metrics = [Metric(_metric_name(k), float(v), now, 0) for k, v in values.items()
                   if v is not None and logged.get(_metric_name(k)) != float(v)]
        tags = {"status": outcome.status, "stop_reason": outcome.stop_reason,
                "epochs_run": str(outcome.epochs_run)}
        client.log_batch(run_id, metrics=metrics,
                         tags=[RunTag(k, str(v)[:_MAX_TAG_LEN]) for k, v in tags.items()])
        if outcome.error:
            client.log_text(run_id, outcome.error, "error.txt")
        client.set_terminated(run_id, "FAILED" if outcome.status == "failed" else "FINISHED")
        self._open.discard(outcome.key)
        self._finished.add(outcome.key)

    def _finish(self, interrupted: bool) -> None:
        self._log_epochs(strict=True)
        for key in sorted(self._open):
            run_id = self._runs[key]
            self._set_tags(run_id, {"status": "interrupted",
                                    "stop_reason": "the driver stopped before the trial finished"})
            self._client.set_terminated(run_id, "KILLED")
        self._open.clear()
        self._set_tags(self._require_parent(),
                       {"sweep_status": "interrupted" if interrupted else "finished"})
        self._client.set_terminated(self.parent_run_id, "KILLED" if interrupted else "FINISHED")

    # -- helpers ----------------------------------------------------------------------------------
    def _run_of(self, key: str) -> str:
        run_id = self._runs.get(key)
        if run_id is None:
            raise ValueError(
                f"trial {key} has no MLflow run; the runner must call trial_started(TrialInfo) "
                "before epoch or trial_finished events"
            )
        return run_id

    def _already_logged(self, run_id: str) -> int:
        """The last epoch a reused run has in MLflow (found once per run), else -1."""
        if run_id not in self._logged_upto:
            last = -1
            if run_id in self._reused:
                run = self._client.get_run(run_id)
                for name in run.data.metrics:
                    for m in self._client.get_metric_history(run_id, name):
                        if not (name in (*_ONCE, "wall_time_s")
                                or name.startswith("best/")):
                            last = max(last, m.step)
            self._logged_upto[run_id] = last
        return self._logged_upto[run_id]

    def _search(self, filter_string: str) -> list:
        out, token = [], None
        while True:
            page = self._client.search_runs(
                [self.experiment_id], filter_string=filter_string, max_results=1000,
                page_token=token,
            )
            out.extend(page)
            token = page.token
            if not token:
                return out

    def _set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:_MAX_TAG_LEN]) for k, v in tags.items()]
        for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
            self._client.log_batch(run_id, tags=chunk)
