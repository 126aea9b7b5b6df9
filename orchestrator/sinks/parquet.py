"""The Parquet sink: one row per trial and one row per trial x epoch, for analysis and the report.

Files in the sweep's own folder `<storage>/<name>/`:

- `trials.parquet`: one row per finished trial (status completed | stopped | failed; a trial
  still running has no row). Fixed columns (`TRIAL_FIELDS`): identity (`trial_key`, `sweep`,
  `arm`, `seed`, `backbone`), outcome (`status`, `stop_reason`, `epochs_run`, `wall_time_s`,
  `finished_at`), model size (`params`, `macs`), the spec's metric as `metric` (its name),
  `mode`, `metric_final` (last reported value) and `metric_best` (best value by `mode`), every
  metric's last value as JSON (`final_metrics`), the trial's extra `tags` and full nested
  `config` as JSON, `versions` (struct of python, torch, timm, ray, mlflow, optuna) and
  `git_commit`. Then one column `config.<dotted key>` per config leaf, holding the value as JSON
  text: a fixed string type whatever the value (`model.locality.layers` may be "all", 3 or a
  list), so the schema never changes between trials or runs. `read_trials` decodes them.
- `epochs.parquet`: `trial_key`, `epoch`, `node` (the Ray node that trained the epoch, as
  `<node ip>:<first 8 hex digits of its node id>`), then one float64 column per reported metric.
- `spec.yaml`: the resolved spec, headed by comments with the versions and git commit (comments,
  so that the file stays a valid spec to run again).

Rows are upserted by trial key and by (trial key, epoch), so replaying a trial after `--resume`
replaces its rows instead of adding new ones. Each table is a `_parted.PartedTable`: a trial's end
appends its rows to the table's log under `_parts/`, flushed and fsync'd before the driver goes
on (a cost that does not grow with the sweep), and a full log becomes a part file. The
documented files are rewritten from the parts ("compacted") when the sweep starts, when it
ends (also when interrupted), and at trial ends in between, but only once the time since the last
compaction is 50 times what that compaction took (and at least 2 s): compaction grows with the
table, so this keeps it under 2% of the driver's time. While a sweep runs, `pd.read_parquet` on
the documented paths may therefore lag: by seconds on a small sweep, by about two and a half
minutes at a million epoch rows. `read_trials` / `read_epochs` always include the parts and
the log. Every other write goes to a temporary file in the same folder and is renamed over the
target (`os.replace`), and a log's write cut short is skipped by readers, so a reader or a
killed driver never sees a half-written table.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator._files import atomic_write_bytes
from orchestrator._flatten import encode_value, flatten_config
from orchestrator._provenance import (
    TRACKED_PACKAGES,
    provenance,
    spec_yaml_text,
    write_spec_yaml,
)
from orchestrator.layout import EPOCHS_FILE, TRIALS_FILE
from orchestrator.sinks.base import FinishedTrial, TrialInfo, TrialOutcome, best_of
from orchestrator.sinks.parted import LOG_ROWS, PartedTable

__all__ = [
    "CONFIG_PREFIX",
    "EPOCH_FIELDS",
    "TRIAL_FIELDS",
    "ParquetSink",
    "atomic_write_bytes",
    "epochs_schema",
    "read_epochs",
    "read_trials",
    "spec_yaml_text",
    "table_exists",
    "trials_schema",
    "write_spec_yaml",
]

CONFIG_PREFIX = "config."

_VERSIONS_TYPE = pa.struct([pa.field(name, pa.string()) for name in ("python", *TRACKED_PACKAGES)])

TRIAL_FIELDS: tuple[pa.Field, ...] = (
    pa.field("trial_key", pa.string(), nullable=False),
    pa.field("sweep", pa.string()),
    pa.field("arm", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("backbone", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("stop_reason", pa.string()),
    pa.field("epochs_run", pa.int64()),
    pa.field("wall_time_s", pa.float64()),
    pa.field("finished_at", pa.timestamp("ms", tz="UTC")),
    pa.field("params", pa.int64()),
    pa.field("macs", pa.int64()),
    pa.field("metric", pa.string()),
    pa.field("mode", pa.string()),
    pa.field("metric_final", pa.float64()),
    pa.field("metric_best", pa.float64()),
    pa.field("final_metrics", pa.string()),
    pa.field("tags", pa.string()),
    pa.field("config", pa.string()),
    pa.field("versions", _VERSIONS_TYPE),
    pa.field("git_commit", pa.string()),
)
EPOCH_FIELDS: tuple[pa.Field, ...] = (
    pa.field("trial_key", pa.string(), nullable=False),
    pa.field("epoch", pa.int64(), nullable=False),
    pa.field("node", pa.string()),
)
_EPOCH_KEYS = tuple(f.name for f in EPOCH_FIELDS)
_STATUSES = ("completed", "stopped", "failed")


def trials_schema(config_keys: list[str] | tuple[str, ...] = ()) -> pa.Schema:
    """The trials.parquet schema: the fixed fields, then one JSON string column per config key."""
    extra = [pa.field(f"{CONFIG_PREFIX}{k}", pa.string()) for k in sorted(config_keys)]
    return pa.schema([*TRIAL_FIELDS, *extra])


def epochs_schema(metric_names: list[str] | tuple[str, ...] = ()) -> pa.Schema:
    """The epochs.parquet schema: trial_key, epoch, node, then one float64 column per metric."""
    return pa.schema([*EPOCH_FIELDS, *(pa.field(m, pa.float64()) for m in sorted(metric_names))])


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out


class ParquetSink:
    """Writes trials.parquet / epochs.parquet / spec.yaml for one sweep (driver only).

    `flush_interval_s`: epochs that arrived are written (as a part) when a trial finishes, on
    `finish()`, and at most this often while epochs arrive, so a long trial's curve is on disk
    before it ends. At a trial end the documented files are compacted from the parts when the
    time since the last compaction is at least `compact_interval_s` and `compact_cost_factor`
    times what the last compaction took.
    """

    def __init__(self, flush_interval_s: float = 30.0, compact_interval_s: float = 2.0,
                 compact_cost_factor: float = 50.0) -> None:
        self.flush_interval_s = flush_interval_s
        self.compact_interval_s = compact_interval_s
        self.compact_cost_factor = compact_cost_factor
        self._compact_took = 0.0
        self._dir: Path | None = None
        self._sweep = ""
        self._metric = ""
        self._mode = "max"
        self._prov: Mapping[str, Any] = {}
        self._infos: dict[str, TrialInfo] = {}
        self._trials: dict[str, dict[str, Any]] = {}
        self._trials_table: PartedTable | None = None
        self._epochs_table: PartedTable | None = None
        self._pending: dict[tuple[str, int], dict[str, Any]] = {}   # epochs not yet written
        self._last_epoch: dict[str, int] = {}        # per trial, the last epoch on disk or pending
        self._curves: dict[str, dict[int, float]] = {}  # the spec's metric, trials not finished
        self._last_flush = 0.0
        self._last_compact = 0.0

    # -- Sink protocol ---------------------------------------------------------------------------
    def start(self, *, sweep_name: str, storage_dir: str, spec: Mapping[str, Any],
              metric: str, mode: str, total_trials: int | None,
              prior: Sequence[FinishedTrial] = ()) -> None:
        # (`prior`: this sink keeps its own record of earlier drivers' trials.)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max' but got {mode!r}")
        self._dir = Path(storage_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._sweep, self._metric, self._mode = sweep_name, metric, mode
        self._prov = provenance()
        self._trials_table = _trials_table(self._dir)
        self._epochs_table = _epochs_table(self._dir)
        # A driver killed mid-sweep left parts: fold them into the documented files first.
        self._trials_table.compact()
        self._epochs_table.compact()
        trials = self._trials_table.read()
        self._trials = {r["trial_key"]: r for r in trials.to_pylist()} if trials else {}
        self._load_epoch_state()
        write_spec_yaml(self._dir, spec, self._prov)
        self._last_flush = self._last_compact = time.monotonic()

    def _load_epoch_state(self) -> None:
        """Each trial's last epoch on disk, and the metric's curve of the unfinished trials."""
        assert self._epochs_table is not None
        epochs = self._epochs_table.read(["trial_key", "epoch", self._metric])
        if epochs is None:
            return
        last = epochs.group_by("trial_key", use_threads=False).aggregate([("epoch", "max")])
        self._last_epoch = dict(zip(last["trial_key"].to_pylist(),
                                    last["epoch_max"].to_pylist(), strict=True))
        if self._metric not in epochs.column_names:
            return
        unfinished = pa.array(sorted(set(self._last_epoch) - set(self._trials)), pa.string())
        rows = epochs.filter(pc.is_in(epochs["trial_key"], value_set=unfinished))
        for row in rows.to_pylist():
            if row[self._metric] is not None:
                self._curves.setdefault(row["trial_key"], {})[row["epoch"]] = row[self._metric]

    def trial_started(self, info: TrialInfo) -> None:
        self._infos[info.key] = info

    def epoch(self, key: str, epoch: int, metrics: Mapping[str, float], node: str = "",
              restored: bool = False) -> None:
        if restored and int(epoch) <= self._last_epoch.get(key, 0):
            return              # on disk or pending already (a trial's epochs are written in order)
        row: dict[str, Any] = {"trial_key": key, "epoch": int(epoch), "node": node or None}
        for name, value in metrics.items():
            if name in _EPOCH_KEYS:
                continue
            number = _float_or_none(value)
            if number is not None:
                row[name] = number
        self._pending[(key, int(epoch))] = row
        self._last_epoch[key] = max(int(epoch), self._last_epoch.get(key, 0))
        if row.get(self._metric) is not None:
            self._curves.setdefault(key, {})[int(epoch)] = row[self._metric]
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self._flush_epochs()

    def trial_finished(self, outcome: TrialOutcome) -> None:
        self._require_started()
        if outcome.status not in _STATUSES:
            raise ValueError(
                f"trial {outcome.key}: status must be one of {', '.join(_STATUSES)} "
                f"but got {outcome.status!r}"
            )
        row = self._trial_row(outcome)
        assert self._trials_table is not None and self._epochs_table is not None
        self._trials[outcome.key] = row
        self._trials_table.append([row], _trials_schema_of([row]))
        self._flush_epochs()
        self._curves.pop(outcome.key, None)
        if self._last_epoch.get(outcome.key, 0) > outcome.epochs_run:
            # A restarted trial that got less far than its first attempt: drop the stale epochs
            # (rare: a rewrite of the whole table).
            key, ran = outcome.key, int(outcome.epochs_run)
            self._epochs_table.compact(drop=lambda t: pc.and_(
                pc.equal(t["trial_key"], key), pc.greater(t["epoch"], ran)))
            self._last_epoch[key] = ran
        since = time.monotonic() - self._last_compact
        if since >= max(self.compact_interval_s, self.compact_cost_factor * self._compact_took):
            self._compact()

    def finish(self, *, interrupted: bool = False) -> None:
        if self._dir is None:
            return
        self._flush_epochs()
        self._compact()

    # -- rows ------------------------------------------------------------------------------------
    def _require_started(self) -> Path:
        if self._dir is None:
            raise RuntimeError("ParquetSink.start() must be called before trial events")
        return self._dir

    def _trial_row(self, outcome: TrialOutcome) -> dict[str, Any]:
        info = self._infos.get(outcome.key)
        previous = self._trials.get(outcome.key)
        if info is None and previous is None:
            raise ValueError(
                f"trial {outcome.key} finished but was never started; the runner must call "
                "trial_started(TrialInfo) before trial_finished for every trial"
            )
        row: dict[str, Any] = dict(previous or {})
        if info is not None:
            # Config columns of an earlier attempt are replaced, not merged.
            row = {k: v for k, v in row.items() if not k.startswith(CONFIG_PREFIX)}
            row.update(
                arm=info.arm, seed=int(info.seed), backbone=info.backbone,
                tags=json.dumps(dict(info.tags), sort_keys=True),
                config=json.dumps(info.config, sort_keys=True, default=str),
            )
            for k, v in flatten_config(info.config).items():
                row[f"{CONFIG_PREFIX}{k}"] = encode_value(v)
        final_metric, best_metric = self._metric_values(outcome)
        row.update(
            trial_key=outcome.key, sweep=self._sweep, status=outcome.status,
            stop_reason=outcome.stop_reason, epochs_run=int(outcome.epochs_run),
            wall_time_s=float(outcome.wall_time_s),
            finished_at=_dt.datetime.now(_dt.timezone.utc),
            params=outcome.params, macs=outcome.macs,
            metric=self._metric, mode=self._mode,
            metric_final=final_metric, metric_best=best_metric,
            final_metrics=json.dumps(
                {k: _float_or_none(v) for k, v in outcome.final.items()}, sort_keys=True
            ),
            versions=dict(self._prov["versions"]), git_commit=self._prov["git_commit"],
        )
        return row

    def _metric_values(self, outcome: TrialOutcome) -> tuple[float | None, float | None]:
        """Final and best value of the spec's metric; from the epochs when the outcome lacks it."""
        curve = [
            v for e, v in sorted(self._curves.get(outcome.key, {}).items())
            if e <= outcome.epochs_run and not math.isnan(v)
        ]
        final = _float_or_none(outcome.final.get(self._metric))
        if final is None and curve:
            final = curve[-1]
        best = _float_or_none(outcome.best.get(self._metric))
        if best is None:
            best = best_of(curve, self._mode)
        return final, best

    # -- writes ----------------------------------------------------------------------------------
    def _flush_epochs(self) -> None:
        if not self._pending:
            return
        assert self._epochs_table is not None
        rows = [self._pending[k] for k in sorted(self._pending)]
        names = sorted({k for row in rows for k in row} - set(_EPOCH_KEYS))
        self._epochs_table.append(rows, epochs_schema(names))
        self._pending = {}
        self._last_flush = time.monotonic()

    def _compact(self) -> None:
        assert self._trials_table is not None and self._epochs_table is not None
        start = time.monotonic()
        self._trials_table.compact()
        self._epochs_table.compact()
        self._last_compact = time.monotonic()
        self._compact_took = self._last_compact - start


def _trials_schema_of(rows: list[dict[str, Any]]) -> pa.Schema:
    return trials_schema(sorted({k[len(CONFIG_PREFIX):] for row in rows for k in row
                                 if k.startswith(CONFIG_PREFIX)}))


def _trials_table(directory: Path) -> PartedTable:
    return PartedTable(
        directory / TRIALS_FILE, ("trial_key",),
        lambda schema: trials_schema([n[len(CONFIG_PREFIX):] for n in schema.names
                                      if n.startswith(CONFIG_PREFIX)]),
        atomic_write_bytes, log_rows=LOG_ROWS)


def _epochs_table(directory: Path) -> PartedTable:
    return PartedTable(
        directory / EPOCHS_FILE, ("trial_key", "epoch"),
        lambda schema: epochs_schema([n for n in schema.names if n not in _EPOCH_KEYS]),
        atomic_write_bytes, log_rows=LOG_ROWS)


def table_exists(directory: str | os.PathLike, name: str) -> bool:
    """Whether the sweep folder has rows of `name` (trials.parquet / epochs.parquet) on disk,
    in the documented file or in parts not yet compacted into it (a log cut short before its
    first whole record holds none)."""
    return _table(directory, name).exists()


def _table(directory: str | os.PathLike, name: str) -> PartedTable:
    return _trials_table(Path(directory)) if name == TRIALS_FILE else _epochs_table(Path(directory))


def _require_table(directory: str | os.PathLike, name: str) -> PartedTable:
    table = _table(directory, name)
    if not table.exists():
        raise FileNotFoundError(
            f"{table.path} does not exist; pass the sweep's folder (<storage>/<name>/) of a sweep "
            "that has finished at least one trial"
        )
    return table


def _read(directory: str | os.PathLike, name: str, columns: list[str] | None) -> pa.Table:
    table = _require_table(directory, name).read(columns)
    assert table is not None, "the table exists"
    return table


def read_trials(directory: str | os.PathLike, decode_config: bool = True,
                columns: list[str] | None = None):
    """The sweep's trials (trials.parquet and parts not compacted into it yet) as a pandas
    DataFrame sorted by trial_key; `config.*` columns decoded from JSON by default."""
    df = _read(directory, TRIALS_FILE, columns).to_pandas()
    if decode_config:
        for col in [c for c in df.columns if c.startswith(CONFIG_PREFIX)]:
            df[col] = df[col].map(lambda s: json.loads(s) if isinstance(s, str) else None)
    return df


def read_epochs(directory: str | os.PathLike, columns: list[str] | None = None):
    """The sweep's epochs (epochs.parquet and parts not compacted into it yet) as a pandas
    DataFrame sorted by trial_key, epoch."""
    return _read(directory, EPOCHS_FILE, columns).to_pandas()
