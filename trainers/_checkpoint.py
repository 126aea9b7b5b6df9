"""Full training checkpoints that load with `torch.load(weights_only=True)`.

A checkpoint holds everything that decides the rest of a trial: model, optimizer, scheduler, EMA
and AMP-scaler state, the epoch and step counters, the metric history, and every RNG the trainer
touches (torch CPU and CUDA, numpy's global generator that timm's Mixup draws from, and Python's
`random` that RandAugment draws from). RNG states are stored as tensors, ints and lists only, so
the file never needs pickle's arbitrary-object loading. Writes are atomic (temp file, then
`os.replace`): a kill during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers._atomic import atomic_write
from trainers.config import ConfigError

__all__ = [
    "CHECKPOINT_NAME",
    "capture_rng",
    "load_checkpoint",
    "resolve_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def capture_rng() -> dict[str, Any]:
    """Every global RNG state, as weights_only-safe values (tensors, ints, floats, lists)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss": py_gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states that `capture_rng` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))


def save_checkpoint(state: dict[str, Any], out_dir: str | Path) -> Path:
    """Write `state` to `out_dir/checkpoint.pt` atomically and return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CHECKPOINT_NAME
    return atomic_write(path, lambda fh: torch.save({"format": FORMAT_VERSION, **state}, fh))


def resolve_checkpoint(path: str | Path) -> Path:
    """`path` itself if it is a file, else `path/checkpoint.pt`; ConfigError if neither exists."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise ConfigError(f"resume_from: no checkpoint at {p}; pass a checkpoint.pt or the "
                          f"directory of a run that finished at least one epoch")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` (weights_only: no arbitrary pickle)."""
    p = resolve_checkpoint(path)
    state = torch.load(p, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ConfigError(f"resume_from: {p} is not a trainer checkpoint (format "
                          f"{FORMAT_VERSION}); it was written by something else")
    return state
