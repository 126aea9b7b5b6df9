"""Ray Tune's saved experiment in a sweep's storage: its state files, whole or not, and the trial
checkpoints it needs.

Tune saves its experiment as a set of files per driver session (`experiment_state-S.json`, the
search algorithm's `basic-variant-state-S.json` or `search_gen_state-S.json` and
`searcher-state-S.pkl`, `callback-states-S.pkl`) plus one `tuner.pkl`, and copies them into the
storage in place: a disk that fills up mid-copy leaves any of them cut short, and a restore then
fails on whichever it reads first. `set_aside_damaged_sessions` renames every file of a session
that is not whole (or lacks its experiment state) to `*.damaged`, newest session first, so that
Tune restores the newest whole session; with none left the runner reruns what Parquet does not
hold as finished.

Tune also deletes a trial's older checkpoints as soon as it registers a new one, before it saves
the state that names the new one: a driver killed in between leaves a state pointing at a deleted
checkpoint. So the runner tells Tune to keep every checkpoint and `CheckpointKeeper` deletes
instead, never one that a saved state in the storage names.
"""

from __future__ import annotations

import json
import pickletools
import re
import time
from collections.abc import Iterable
from typing import Any

import pyarrow.fs as pafs
from ray.tune import Callback

from orchestrator._files import filesystem
from orchestrator.tune.ray_compat import saved_checkpoint_paths

__all__ = ["DAMAGED_SUFFIX", "CheckpointKeeper", "experiment_files", "has_saved_state",
           "set_aside_damaged_sessions"]

DAMAGED_SUFFIX = ".damaged"
TUNER_FILE = "tuner.pkl"
_SESSION_FILE = re.compile(r"^(experiment_state|basic-variant-state|search_gen_state|"
                           r"searcher-state|callback-states)-(.+)\.(json|pkl)$")
_CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")


def experiment_files(experiment_dir: str) -> tuple[Any, list[Any]]:
    """(pyarrow filesystem, the files directly in Tune's experiment folder, by name)."""
    fs, path = filesystem(experiment_dir)
    found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return fs, sorted((i for i in found if i.type == pafs.FileType.File),
                      key=lambda i: i.base_name)


def _is_state(name: str) -> bool:
    return name.startswith("experiment_state-") and name.endswith(".json")


def has_saved_state(experiment_dir: str) -> bool:
    """Whether Tune saved an experiment there (its tuner and a state snapshot)."""
    names = [i.base_name for i in experiment_files(experiment_dir)[1]]
    return TUNER_FILE in names and any(_is_state(n) for n in names)


def _whole(name: str, data: bytes) -> bool:
    """Whether a saved file is complete: the experiment state parses as JSON; the others are
    pickles (whatever their extension), whose opcodes must run to the STOP opcode. Nothing is
    unpickled."""
    try:
        if _is_state(name):
            json.loads(data)
        else:
            for _ in pickletools.genops(data):
                pass
    except (ValueError, UnicodeDecodeError):
        return False
    return bool(data)


def _sessions(names: Iterable[str]) -> dict[str, list[str]]:
    """Session -> the names of its state files."""
    out: dict[str, list[str]] = {}
    for name in names:
        if m := _SESSION_FILE.match(name):
            out.setdefault(m.group(2), []).append(name)
    return out


def set_aside_damaged_sessions(experiment_dir: str) -> bool:
    """Rename every file of each newest session that is cut short or lacks its experiment state
    (and a cut-short `tuner.pkl`) to `*.damaged`, until the newest session is whole. Whether
    anything was set aside."""
    fs, files = experiment_files(experiment_dir)
    by_name = {i.base_name: i.path for i in files}

    def read(name: str) -> bytes:
        with fs.open_input_stream(by_name[name]) as f:
            return bytes(f.readall())

    def set_aside(name: str) -> None:
        fs.move(by_name[name], by_name[name] + DAMAGED_SUFFIX)

    damaged = False
    if TUNER_FILE in by_name and not _whole(TUNER_FILE, read(TUNER_FILE)):
        set_aside(TUNER_FILE)
        damaged = True
    for _, names in sorted(_sessions(by_name).items(), reverse=True):
        if any(_is_state(n) for n in names) and all(_whole(n, read(n)) for n in names):
            break
        for name in names:
            set_aside(name)
        damaged = True
    return damaged


class CheckpointKeeper(Callback):
    """Deletes a trial's checkpoints beyond its newest `keep`, except the one any whole saved
    experiment state in the storage names for it (what a restore resumes the trial from).

    Tune is given `num_to_keep=None`, so it deletes nothing itself. Trials that saved a checkpoint
    are pruned at most every PRUNE_INTERVAL_S seconds and all of them at the end of the run,
    which Tune reaches after its final state save. A state file that cannot be read (being
    copied, cut short) skips the round: deleting less is always safe.
    """

    # Tune saves its state every 10 s or more: pruning more often would find nothing new.
    PRUNE_INTERVAL_S = 10.0

    def __init__(self, experiment_dir: str, keep: int):
        self.configure(experiment_dir, keep)
        self._reset()

    def configure(self, experiment_dir: str, keep: int) -> None:
        """Where the experiment is and how many checkpoints to keep (again after a restore)."""
        self._experiment_dir, self._keep = experiment_dir, keep

    def _reset(self) -> None:
        # trial id -> (its folder on the storage, the newest checkpoint index Tune registered)
        self._dirty: dict[str, tuple[str, int]] = {}
        self._all: dict[str, tuple[str, int]] = {}
        self._parsed: dict[str, tuple[tuple[int, int], dict[str, str | None]]] = {}
        self._last = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        return {"_experiment_dir": self._experiment_dir, "_keep": self._keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        folder, _, name = checkpoint.path.rstrip("/").rpartition("/")
        if m := _CHECKPOINT_DIR.match(name):
            self._dirty[trial.trial_id] = self._all[trial.trial_id] = (folder, int(m.group(1)))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._dirty and time.monotonic() - self._last >= self.PRUNE_INTERVAL_S:
            self.prune(self._dirty)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # Tune has just saved its final state: the older sessions' states are needed no more.
        self.prune(self._all, newest_state_only=True)

    def _referenced(self, fs: Any, files: list[Any], newest_only: bool
                    ) -> dict[str, set[str]] | None:
        """Trial id -> the checkpoints that the saved states among `files` name (every
        session's: a restore falls back to an older one when the newest is cut short; or the
        newest session's alone); None if one of them is unreadable."""
        states = [i for i in files if _is_state(i.base_name)]
        referenced: dict[str, set[str]] = {}
        for info in states[-1:] if newest_only else states:
            stamp = (info.size, info.mtime_ns or 0)
            cached = self._parsed.get(info.base_name)
            if cached is None or cached[0] != stamp:
                try:
                    with fs.open_input_stream(info.path) as f:
                        cached = (stamp, saved_checkpoint_paths(f.readall().decode()))
                except (OSError, ValueError, KeyError, UnicodeDecodeError):
                    return None
                self._parsed[info.base_name] = cached
            for trial_id, path in cached[1].items():
                if path is not None:
                    referenced.setdefault(trial_id, set()).add(path.rstrip("/"))
        return referenced

    def prune(self, trials: dict[str, tuple[str, int]], newest_state_only: bool = False
              ) -> list[str]:
        """Prune the given trials' checkpoint folders now; the folders deleted. A folder numbered
        past the trial's newest registered checkpoint is one being written: it is kept and does
        not count among the newest `keep`."""
        self._last = time.monotonic()
        fs, files = experiment_files(self._experiment_dir)
        referenced = self._referenced(fs, files, newest_state_only)
        if referenced is None:
            return []
        deleted = []
        for trial_id, (folder, latest) in list(trials.items()):
            found = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            numbered = sorted((int(m.group(1)), i.path.rstrip("/")) for i in found
                              if i.type == pafs.FileType.Directory
                              and (m := _CHECKPOINT_DIR.match(i.base_name)))
            registered = [p for n, p in numbered if n <= latest]
            keep = ({p for n, p in numbered if n > latest} | set(registered[-self._keep:])
                    | referenced.get(trial_id, set()))
            for _, path in numbered:
                if path not in keep:
                    fs.delete_dir(path)
                    deleted.append(path)
            self._dirty.pop(trial_id, None)
        return deleted
