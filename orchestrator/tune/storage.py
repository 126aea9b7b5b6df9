"""Where a sweep lives: its folder (`<run.storage>/<name>`) and Ray Tune's experiment (in the
sweep's folder, or at `run.tune_storage`: a shared folder or an s3:// / gs:// URI).

`check_storage` runs before anything is created: a storage root that cannot be written, a sweep
that already exists without `--resume`, or a `--resume` of another sweep is a SweepError.
`storage_problems` says, at the end, which of these folders cannot take a write any more.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pyarrow.fs as pafs

from orchestrator._files import filesystem, is_uri
from orchestrator.errors import StorageError
from orchestrator.layout import SPEC_FILE, TUNE_DIR
from orchestrator.plan.model import Plan
from orchestrator.tune.grow import Growth, check_growth
from orchestrator.tune.state import has_saved_state

__all__ = ["TUNE_DIR", "check_same_sweep", "check_storage", "saved_state",
           "storage_problems", "sweep_dir", "tune_experiment_dir", "tune_storage"]



def sweep_dir(plan: Plan) -> Path:
    return Path(plan.spec.run.storage).expanduser().resolve() / plan.spec.name


def tune_storage(plan: Plan) -> str:
    """Tune's storage_path: `run.tune_storage` (a shared folder or an s3:// / gs:// URI) or, by
    default, `<storage>/<name>/tune` in the sweep's own folder."""
    where = plan.spec.run.tune_storage
    if where is None:
        return str(sweep_dir(plan) / TUNE_DIR)
    return where if is_uri(where) else str(Path(where).expanduser().resolve())


def tune_experiment_dir(plan: Plan) -> str:
    """Where Tune keeps this sweep's experiment (tuner.pkl, its state, trial checkpoints)."""
    return f"{tune_storage(plan).rstrip('/')}/{plan.spec.name}"


def _unwritable(folder: Path) -> Path | None:
    """The folder that would hold `folder` (itself, or its nearest existing parent) when it is
    not a folder this process may create files in; None when it is."""
    probe = folder.expanduser().resolve()
    while not probe.exists():
        probe = probe.parent
    return None if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK) else probe


def _check_tune_storage(plan: Plan, *, resume: bool) -> None:
    """run.tune_storage must be reachable and writable, and hold no other sweep of this name."""
    location = plan.spec.run.tune_storage
    if location is None:
        return
    where = f"{plan.source}: run.tune_storage"
    if not is_uri(location) and (probe := _unwritable(Path(location))) is not None:
        raise StorageError(f"{where}: cannot write to {location} ({probe} is not a writable "
                           f"folder); give a folder every node of the cluster mounts, or an "
                           f"s3:// or gs:// URI")
    try:
        fs, path = filesystem(location)
        info = fs.get_file_info(path)
        # Tune creates folders under the location, but never the bucket itself.
        bucket = fs.get_file_info(path.split("/", 1)[0]) if is_uri(location) else None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises OSError/ArrowInvalid by backend
        raise StorageError(
            f"{where}: cannot reach {location}: {str(exc).strip().splitlines()[0]}; check the "
            f"bucket name and the credentials (for S3: AWS_ACCESS_KEY_ID / "
            f"AWS_SECRET_ACCESS_KEY or an instance profile, AWS_ENDPOINT_URL for a non-AWS "
            f"server)") from None
    if info.type == pafs.FileType.File:
        raise StorageError(f"{where}: {location} is a file, not a folder")
    if bucket is not None and bucket.type == pafs.FileType.NotFound:
        scheme = location.split("://", 1)[0].lower()
        make = {"s3": f", e.g. aws s3 mb s3://{bucket.path}",
                "gs": f", e.g. gcloud storage buckets create gs://{bucket.path}"}.get(scheme, "")
        raise StorageError(f"{where}: the bucket {bucket.path!r} of {location} does not exist "
                           f"(or these credentials cannot see it); create it first{make}")
    if not resume and saved_state(plan):
        raise StorageError(
            f"{where}: a Tune experiment named '{plan.spec.name}' already exists at "
            f"{tune_experiment_dir(plan)}; pass --resume to continue it, or start a new sweep "
            f"with --set name=<new name>")


def check_storage(plan: Plan, *, resume: bool, rerun_changed: bool = False) -> Path:
    """The sweep's folder, if it may be used; raises StorageError/ResumeError, creates nothing."""
    root = Path(plan.spec.run.storage).expanduser()
    where = f"{plan.source}: run.storage"
    if root.exists() and not root.is_dir():
        raise StorageError(f"{where}: {root} is a file, not a folder; point run.storage at a "
                           f"folder (for example --set run.storage=./sweeps)")
    if (probe := _unwritable(root)) is not None:
        raise StorageError(f"{where}: cannot write to {root} ({probe} is not writable); choose "
                           f"a folder you can write, e.g. --set run.storage=./sweeps")
    target = sweep_dir(plan)
    _check_tune_storage(plan, resume=resume)
    if resume:
        # Killed before Tune saved anything, a resumed sweep simply starts (a restart script
        # can always say --resume); it must still be the same sweep, or that sweep grown.
        check_same_sweep(plan, target / SPEC_FILE, rerun_changed=rerun_changed)
    elif target.exists() and any(target.iterdir()):
        raise StorageError(f"{where}: a sweep named '{plan.spec.name}' already exists in "
                           f"{target}; pass --resume to continue it, or start a new one with "
                           f"--set name=<new name> (or remove that folder)")
    return target


def saved_state(plan: Plan) -> bool:
    """Whether Tune saved this sweep's experiment (its tuner and a state snapshot)."""
    return has_saved_state(tune_experiment_dir(plan))


def check_same_sweep(plan: Plan, saved_path: Path, *, rerun_changed: bool = False
                     ) -> Growth | None:
    """--resume continues the sweep it saved (None), or grows it by new seeds, arms or axis
    values (a Growth; `orchestrator.tune.grow`); any other difference is a ResumeError."""
    return check_growth(plan, saved_path, rerun_changed=rerun_changed,
                        tune_saved=saved_state(plan))


def storage_problems(plan: Plan) -> list[str]:
    """The sweep's folders that cannot take a write now (full, read-only, gone): one line each,
    naming the folder and the system's reason. Tables written before such a fault are whole:
    every write is a temporary file renamed over the target."""
    folders = [sweep_dir(plan)]
    location = plan.spec.run.tune_storage
    if location is None or not is_uri(location):
        folders.append(Path(tune_experiment_dir(plan)))
    problems = []
    for folder in dict.fromkeys(folders):
        probe = folder / f".write-probe-{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as f:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            problems.append(f"cannot write to {folder}: {exc.strerror or exc}")
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
    return problems
