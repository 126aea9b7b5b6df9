"""What the report reads: a sweep folder's spec.yaml and Parquet tables, checked and typed.

`load_sweep(directory)` returns a `SweepInputs` (the design from spec.yaml, the trials and epochs
as DataFrames, the arm-level decisions if any) or raises `ReportError` naming the file and how to
fix it: a missing folder, a missing or unreadable spec.yaml / trials.parquet / epochs.parquet /
decisions.parquet, a table without the columns the sweep writes. Nothing is written here.

The arms come from the plan record the runner wrote into spec.yaml
(`orchestrator.plan.record.PlanRecord`), in plan order; an arm that only the trials name (a table
from another source) is measured against the baseline. Rows of trials the record does not list
(superseded by `--resume --rerun-changed`) are left out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from orchestrator._provenance import parse_spec_yaml
from orchestrator.errors import SweepError
from orchestrator.layout import DECISIONS_FILE, EPOCHS_FILE, SPEC_FILE, TRIALS_FILE
from orchestrator.plan.record import ArmRecord, PlanRecord
from orchestrator.sinks.parquet import read_epochs, read_trials, table_exists

__all__ = ["ReportError", "SweepInputs", "canonical", "load_sweep"]

_TRIAL_COLUMNS = ("trial_key", "arm", "seed", "backbone", "status", "stop_reason", "epochs_run",
                  "params", "macs", "metric_final", "tags", "config")
_FIX_TABLE = ("restore it from a copy, or run the sweep again into fresh storage "
              "(python -m orchestrator.sweep SPEC --set run.storage=NEW_DIR)")


class ReportError(SweepError):
    """The report cannot be built from this sweep folder (a missing or unreadable input, a bad
    --compare-to file); the previous report/ is left as it was."""


@dataclass(frozen=True)
class SweepInputs:
    directory: Path
    name: str
    metric: str
    mode: str                                  # max | min
    design: str                                # ofat | factorial
    base_arm: str                              # resolved to the arm that ran it
    axes: Mapping[str, list[Any]]
    arms: tuple[ArmRecord, ...]                # plan order, then arms seen only in trials
    references_given: bool                     # the spec names references of its own
    space: Mapping[str, tuple[str, Any]]       # search: dotted key -> (kind, values)
    seeds: tuple[int, ...]
    trials: Any                                # pandas DataFrame (tables.read_trials)
    epochs: Any                                # pandas DataFrame (tables.read_epochs)
    decisions: Any | None                      # pandas DataFrame or None
    spec: Mapping[str, Any] = field(default_factory=dict)   # spec.yaml as read (for MLflow sync)

    @property
    def is_search(self) -> bool:
        return bool(self.space)

    def arm(self, name: str) -> ArmRecord | None:
        return next((a for a in self.arms if a.name == name), None)


def canonical(value: Any) -> str:
    """A value as canonical JSON, to compare axis values with factors and configs."""
    return json.dumps(value, sort_keys=True, default=str)


def _seeds(spec: Mapping[str, Any], trials: Any) -> tuple[int, ...]:
    """The seeds the sweep ran: its list, or under a rule that adds seeds
    (`seeds: {start, max}`) those its trials ran so far."""
    seeds = spec.get("seeds") or ()
    if isinstance(seeds, Mapping):
        return tuple(sorted({int(s) for s in trials["seed"]}))
    return tuple(int(s) for s in seeds)


def _read_spec(directory: Path) -> dict[str, Any]:
    path = directory / SPEC_FILE
    if not path.is_file():
        raise ReportError(f"{path}: not found; the sweep writes its resolved spec there when it "
                          f"starts: pass the sweep's own folder (<storage>/<name>/)")
    try:
        data = parse_spec_yaml(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: not readable YAML ({type(exc).__name__}); the sweep writes "
                          f"it at its start: {_FIX_TABLE}") from None
    if not isinstance(data, dict) or not isinstance(data.get("search"), dict):
        raise ReportError(f"{path}: not a resolved sweep spec (no 'search' mapping); pass the "
                          f"sweep's own folder (<storage>/<name>/)")
    return data


def _read_table(directory: Path, name: str, reader) -> Any:
    path = directory / name
    if not table_exists(directory, name):
        raise ReportError(f"{path}: not found; the sweep writes it as trials finish: run the "
                          f"sweep (or --resume it) until at least one trial has finished, or "
                          f"pass the sweep's own folder (<storage>/<name>/)")
    try:
        return reader(directory)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... if damaged
        raise ReportError(f"{path}: not a readable Parquet table ({type(exc).__name__}: "
                          f"{str(exc)[:160]}); {_FIX_TABLE}") from None


def _read_decisions(directory: Path) -> Any | None:
    path = directory / DECISIONS_FILE
    if not path.is_file():
        return None
    try:
        return pq.read_table(path).to_pandas()
    except Exception as exc:  # noqa: BLE001 - as in _read_table: any failure is a damaged file
        raise ReportError(f"{path}: not a readable Parquet table ({type(exc).__name__}); the "
                          f"arm scheduler's log: {_FIX_TABLE}, or move it aside to report "
                          f"without the rung of each stop") from None


def _space(spec: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    out: dict[str, tuple[str, Any]] = {}
    for key, dom in dict(spec["search"].get("space") or {}).items():
        given = [(k, v) for k, v in dict(dom or {}).items() if v is not None]
        if len(given) == 1:
            out[key] = given[0]
    return out


def _arms(spec: Mapping[str, Any], trials: Any, path: Path) -> tuple[ArmRecord, ...]:
    try:
        record = PlanRecord.from_dict(spec["plan"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ReportError(f"{path}: its plan record is incomplete ({type(exc).__name__}: {exc}); "
                          f"the sweep writes it when it starts: {_FIX_TABLE}") from None
    arms = list(record.arms)
    known = {a.name for a in arms}
    seen = [a for a in dict.fromkeys(str(x) for x in trials["arm"]) if a not in known]
    for name in sorted(seen, key=lambda a: (a != "baseline", a)):
        arms.append(ArmRecord(name=name, reference=None if name == "baseline" else "baseline"))
    if not any(a.name == "baseline" for a in arms):
        # Without a baseline arm there is nothing to measure against.
        arms = [replace(a, reference=None) for a in arms]
    return tuple(arms)


def _current(spec: Mapping[str, Any], trials: Any, epochs: Any) -> tuple[Any, Any]:
    """The rows of the trials the plan record lists. A trial that `--resume --rerun-changed` ran
    again under its new key leaves the rows of its old key behind: superseded, not reported. A
    search's record lists no trials: every row counts."""
    plan = spec.get("plan")
    listed = {str(t["key"]) for t in (plan.get("trials") or ()) if isinstance(t, Mapping)
              and "key" in t} if isinstance(plan, Mapping) else set()
    if not listed:
        return trials, epochs
    return (trials[trials["trial_key"].isin(listed)],
            epochs[epochs["trial_key"].isin(listed)])


def load_sweep(directory: str | os.PathLike[str]) -> SweepInputs:
    """Read and check a sweep folder; ReportError (naming the file) if it cannot be reported."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise ReportError(f"{directory}: no such sweep folder; pass <storage>/<name>/ of a sweep "
                          f"(for example ./sweeps/quickstart)")
    spec = _read_spec(directory)
    trials = _read_table(directory, TRIALS_FILE, read_trials)
    missing = [c for c in _TRIAL_COLUMNS if c not in trials.columns]
    if missing:
        raise ReportError(f"{directory / TRIALS_FILE}: lacks the column(s) {', '.join(missing)} "
                          f"that the sweep writes; it is not a sweep's trials table: {_FIX_TABLE}")
    if trials.empty:
        raise ReportError(f"{directory / TRIALS_FILE}: has no trials; run the sweep (or --resume "
                          f"it) until at least one trial has finished")
    epochs = _read_table(directory, EPOCHS_FILE, read_epochs)
    for col in ("trial_key", "epoch"):
        if col not in epochs.columns:
            raise ReportError(f"{directory / EPOCHS_FILE}: lacks the column {col} that the sweep "
                              f"writes; it is not a sweep's epochs table: {_FIX_TABLE}")
    trials, epochs = _current(spec, trials, epochs)
    search = spec["search"]
    metric = str(search.get("metric") or trials["metric"].dropna().iloc[0])
    mode = str(search.get("mode") or "max")
    axes = {str(k): list(v) for k, v in dict(spec.get("axes") or {}).items()}
    arms = _arms(spec, trials, directory / SPEC_FILE)
    base_arm = str(spec.get("base_arm") or "base")
    for arm in arms:
        if base_arm in arm.aliases:
            base_arm = arm.name
    return SweepInputs(
        directory=directory, name=str(spec.get("name") or directory.name), metric=metric,
        mode=mode, design=str(spec.get("design") or "ofat"), base_arm=base_arm, axes=axes,
        arms=arms, references_given=bool(spec.get("references")), space=_space(spec),
        seeds=_seeds(spec, trials), trials=trials, epochs=epochs,
        decisions=_read_decisions(directory), spec=spec)
