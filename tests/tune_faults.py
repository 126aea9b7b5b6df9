"""A sweep driver with a storage fault at a chosen point of Ray Tune's work, for the tests that
need the fault at that point exactly, not at whatever moment a timer hits.

    python tests/tune_faults.py FAULT -- SWEEP ARGS...

FAULT is one of:
- `fill:mid-trial:DIR`: fill the disk mounted at DIR when a trial reports its second epoch
  (before any trial ends; its third checkpoint is then written to a full disk);
- `fill:trial-end:DIR`: once the first trial has ended and its rows are written;
- `fill:state-save:DIR`: while Tune saves its experiment state, once a trial has a checkpoint
  (a save is made then), leaving a few KiB so that Tune's copy into the storage is cut short
  (that copy is waited for, so nothing the driver does in between frees space);
- `fill:final-save:DIR`: the same at Tune's last state save, once every trial has ended (the
  sinks' own last writes then meet the full disk);
- `kill:after-prune`: Tune saves its state once the first trial registered its first checkpoint
  and not again (its state period is set to an hour); the checkpoint keeper prunes after every
  step; once a trial registered its third checkpoint and the keeper pruned, the driver SIGKILLs
  itself: the saved state names a checkpoint two behind the newest.

The patches wrap Tune's controller and the orchestrator's callbacks in this process only; the
sweep itself runs unchanged through `orchestrator.sweep.main`.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any


def fill(folder: Path, leave: int = 0) -> None:
    """Write zeros into `folder` (appended to its filler file) until it is full (less `leave`
    bytes); only inside a mount point of the test's own."""
    assert os.path.ismount(folder), f"{folder} is not the test's own mount"
    size = 1 << 20
    with open(folder / "filler", "ab", buffering=0) as f:
        while size >= 512:
            try:
                f.write(b"\0" * size)
            except OSError:
                size //= 2
        if leave:
            f.truncate(max(0, f.tell() - leave))
    print(f"test fault: {folder} filled", file=sys.stderr, flush=True)


def _wrap(owner: Any, name: str, after: Any) -> None:
    """Replace owner.name by a call of the original followed by after(self, result, *args)."""
    original = getattr(owner, name)

    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        after(self, result, *args, **kwargs)
        return result

    setattr(owner, name, wrapped)


def install(fault: str) -> None:
    from ray.tune.execution.tune_controller import TuneController

    from orchestrator.tune.callback import SinkCallback
    from orchestrator.tune.state import CheckpointKeeper

    kind, _, rest = fault.partition(":")
    done: dict[str, bool] = {}

    def once(key: str) -> bool:
        first = key not in done
        done[key] = True
        return first

    if kind == "fill":
        point, _, folder = rest.partition(":")
        mount = Path(folder)

        # A full disk stays full: the space the checkpoint keeper frees once the disk has
        # filled is taken again on the spot (as another writer on a full disk would), so no
        # later write of the sweep fits into it by the luck of when the keeper ran.
        def refill(self: Any, _r: Any, *args: Any, **kwargs: Any) -> None:
            if "fill" in done:
                fill(mount, leave=4096 if point.endswith("-save") else 0)
        _wrap(CheckpointKeeper, "prune", refill)
        if point == "trial-end":
            _wrap(SinkCallback, "on_trial_complete",
                  lambda self, _r, *a, **k: once("fill") and fill(mount))
        elif point == "mid-trial":
            def at_epoch_two(self: Any, _r: Any, *args: Any, **kwargs: Any) -> None:
                result = kwargs.get("result") or args[3]
                if result.get("epoch") == 2 and once("fill"):
                    fill(mount)
            _wrap(SinkCallback, "on_trial_result", at_epoch_two)
        elif point in ("state-save", "final-save"):
            original = TuneController.save_to_dir

            def due(trials: list[Any]) -> bool:
                if point == "final-save":
                    return all(t.status in ("TERMINATED", "ERROR") for t in trials)
                return any(t.checkpoint is not None for t in trials)

            if point == "state-save":
                # Tune saves its state every 10 s or more: a short sweep may have ended before
                # it saves once with a checkpoint. Its next save (at the end of this step of its
                # loop) is forced once a trial has its first, the way Tune forces one itself
                # when it keeps a fixed number of checkpoints.
                def save_at_first(self: Any, _r: Any, trial: Any, *a: Any, **k: Any) -> None:
                    if trial.checkpoint is not None and once("forced"):
                        self._checkpoint_manager._should_force_sync_up = True
                _wrap(TuneController, "_process_trial_save", save_at_first)

            def save_then_fill(self: Any) -> None:
                if due(self.get_trials()) and once("fill"):
                    # Tune copies the saved state into the storage in a background thread, after
                    # this returns. Left alone, this thread could free space before that copy
                    # (the checkpoint keeper prunes on it; under load it once did, and the copy
                    # then fit): so no copy is running when the disk fills, and the one of this
                    # state is waited for as soon as it starts, while the disk is still full.
                    syncer = self._storage.syncer
                    syncer.wait()
                    fill(mount, leave=4096)
                    launch = syncer.sync_up

                    def launch_and_wait(*args: Any, **kwargs: Any) -> bool:
                        syncer.sync_up = launch
                        launched = launch(*args, **kwargs)
                        syncer.wait()
                        return launched
                    syncer.sync_up = launch_and_wait
                original(self)
            TuneController.save_to_dir = save_then_fill  # type: ignore[method-assign]
        else:
            raise SystemExit(f"unknown fill point {point!r}")
    elif fault == "kill:after-prune":
        os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "3600"
        CheckpointKeeper.PRUNE_INTERVAL_S = 0.0

        def save_first(self: Any, _r: Any, trial: Any, *args: Any, **kwargs: Any) -> None:
            if trial.checkpoint is not None and once("saved"):
                self.checkpoint(force=True, wait=True)
        _wrap(TuneController, "_process_trial_save", save_first)

        def kill_after(self: Any, deleted: list[str], *args: Any, **kwargs: Any) -> None:
            if any(latest >= 2 for _, latest in self._all.values()):
                print(f"test fault: killed after pruning {deleted}", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        _wrap(CheckpointKeeper, "prune", kill_after)
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    fault, sep, *sweep_args = sys.argv[1:]
    assert sep == "--", "usage: tune_faults.py FAULT -- SWEEP ARGS..."
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    install(fault)
    from orchestrator.sweep import main

    sys.exit(main(sweep_args))
