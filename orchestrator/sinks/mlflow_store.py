"""Where a sweep's MLflow store is and what reads it: the tracking URI, the command that starts
the web UI, the link that opens the sweep's trials, and the report logged to the parent run.

MLflow itself (about 3 s to import) is imported in the functions that talk to it, so that the
modules that only need a name or a URI from here do not pay for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from orchestrator._files import process_alive
from orchestrator.layout import ARTIFACTS_DIR, DB_FILE
from orchestrator.sinks import mlflow_view
from orchestrator.sinks.mlflow_view import browse_url

__all__ = ["ARTIFACTS_DIR", "CACHE_ENV", "DB_FILE", "ROLE_TAG", "SWEEP_TAG",
           "create_sqlite_store", "default_tracking_uri", "log_report", "mlflow_ui_command",
           "quiet_mlflow", "sqlite_path", "store_template", "sweep_browse_url"]

ROLE_TAG = "sweep_role"        # "parent" | "trial"
SWEEP_TAG = "sweep_name"
CACHE_ENV = "LOCALVIT_SWEEPS_CACHE"    # where the empty MLflow store is kept (store_template)
# The artifact root the template is built with; a copy's default experiment gets its own.
_TEMPLATE_ARTIFACTS = "file:///localvit-sweeps-template/artifacts"


def default_tracking_uri(storage_dir: str | os.PathLike) -> str:
    """`MLFLOW_TRACKING_URI` if set, else `sqlite:///<absolute storage_dir>/mlflow.db`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(storage_dir).resolve() / DB_FILE}"


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0]).resolve()


def create_sqlite_store(db: Path) -> None:
    """Create the SQLite file of a new MLflow store whole, or not at all; an existing one is
    left as it is.

    MLflow builds a new store's tables and then migrates them step by step (about 2 s of CPU);
    some steps copy a table into `_alembic_tmp_<table>` and swap it in. A driver killed in
    between leaves a store that every later open fails on ("table _alembic_tmp_experiments
    already exists"): the resumed sweep, `sync` and the UI could no longer use it. So a store is
    made under a temporary name beside it and linked into place once it is whole. Of two drivers
    creating it at once, the first link wins and the other's copy is dropped; copies that killed
    drivers left behind are removed.

    The store is a copy of an empty one that MLflow built once for the installed versions of
    MLflow, alembic and SQLAlchemy (`store_template`), with its default experiment pointed at
    this store's artifact folder: a copy takes milliseconds. Where no template can be kept (no
    writable cache folder), MLflow builds the store itself.
    """
    if db.exists():
        return
    artifacts = (db.parent / ARTIFACTS_DIR).as_uri()

    def make(tmp: Path) -> None:
        if not _copy_template(tmp, artifacts):
            _build_store(tmp, artifacts)
    _link_whole(db, make)


def store_template() -> Path:
    """Where the empty MLflow store of the installed versions is kept: `$LOCALVIT_SWEEPS_CACHE`
    if set, else `$XDG_CACHE_HOME/localvit-sweeps` (`~/.cache/localvit-sweeps`). A new version
    of any of the three packages gets a new file; remove the folder to drop old ones."""
    from importlib.metadata import version

    folder = os.environ.get(CACHE_ENV) or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "localvit-sweeps"
    versions = "-".join(f"{name}{version(name)}" for name in ("mlflow", "alembic", "sqlalchemy"))
    return Path(folder) / f"empty-store-{versions}.db"


def _copy_template(dest: Path, artifacts: str) -> bool:
    """Copy the template to `dest` (built first if missing) and point its default experiment at
    `artifacts`. A damaged template is replaced once. False, with nothing at `dest`, when no
    template can be kept or read."""
    template = store_template()
    for attempt in (1, 2):
        try:
            if not template.exists():
                _link_whole(template, lambda tmp: _build_store(tmp, _TEMPLATE_ARTIFACTS))
            shutil.copyfile(template, dest)
            _point_default_experiment(dest, artifacts)
            return True
        except (OSError, sqlite3.Error) as err:
            dest.unlink(missing_ok=True)
            if isinstance(err, sqlite3.Error):      # a damaged template: build it again
                template.unlink(missing_ok=True)
                if attempt == 1:
                    continue
            logging.getLogger(__name__).info("MLflow store built without the template: %s", err)
            return False
    return False


def _point_default_experiment(db: Path, artifacts: str) -> None:
    now = int(time.time() * 1000)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        moved = conn.execute(
            "UPDATE experiments SET artifact_location = ? || substr(artifact_location, ?),"
            " creation_time = ?, last_update_time = ?"
            " WHERE experiment_id = 0 AND substr(artifact_location, 1, ?) = ?",
            (artifacts, len(_TEMPLATE_ARTIFACTS) + 1, now, now, len(_TEMPLATE_ARTIFACTS),
             _TEMPLATE_ARTIFACTS)).rowcount
    if moved != 1:
        raise sqlite3.DatabaseError(f"{db} is not a copy of an empty store built as a template")


def _build_store(path: Path, artifacts: str) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(f"sqlite:///{path}", artifacts).engine.dispose()


def _link_whole(path: Path, make: Callable[[Path], None]) -> None:
    """Make `path` with `make(tmp)` under a temporary name beside it, then link it into place.
    Of two processes making it at once, the first link wins and the other's copy is dropped;
    copies that killed processes left behind are removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_copies(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.new")
    try:
        make(tmp)
        with contextlib.suppress(FileExistsError):     # another process's copy got there first
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_copies(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}.*.new"):
        pid = stale.name.split(".")[-3]         # no number there: not one of ours, kept
        if pid.isdigit() and not process_alive(int(pid)):
            stale.unlink(missing_ok=True)


def mlflow_ui_command(tracking_uri: str) -> str:
    """The exact shell command that shows this sweep's runs in a browser (bound to 127.0.0.1).

    Job execution is switched off because the UI only browses runs here; one worker is enough
    for one reader. For an http(s) tracking server there is nothing to start: open the URI.
    """
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    uri = tracking_uri
    db = sqlite_path(tracking_uri)
    if db is not None:
        uri = f"sqlite:///{db}"
    return (
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui "
        f"--backend-store-uri {shlex.quote(uri)} --workers 1 "
        f"--host {mlflow_view.UI_HOST} --port {mlflow_view.UI_PORT}"
    )


def sweep_browse_url(tracking_uri: str, sweep_name: str, base: str | None = None) -> str:
    """The link that opens the sweep's trials in the MLflow UI, one row per trial, no clicks.

    `base` is where the UI is served: by default the tracking server itself for an http(s) URI,
    else the address `mlflow_ui_command` binds (http://127.0.0.1:5000). The link opens the
    experiment's training runs in the "Trials by arm" view that `MlflowSink.start()` saves
    (grouped by arm, columns arm, seed, status, epochs run, stop reason and the metric, best
    first); an experiment without that view gets the plain runs list. The URL names no run ids,
    so its length does not grow with the number of trials. Raises `LookupError` when the store
    has no experiment of that name.
    """
    if base is None:
        web = tracking_uri.startswith(("http://", "https://"))
        base = tracking_uri if web else mlflow_view.UI_BASE
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        # MlflowClient would create an empty store there.
        raise LookupError(f"no MLflow store at {db}; has the sweep {sweep_name!r} run?")
    from mlflow import MlflowClient

    quiet_mlflow()
    exp = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(sweep_name)
    if exp is None:
        raise LookupError(f"no MLflow experiment named {sweep_name!r} in {tracking_uri}")
    return browse_url(exp.experiment_id, base=base,
                      saved_view=mlflow_view.VIEW_TAG in exp.tags)


def log_report(tracking_uri: str, sweep_name: str, report_dir: str | os.PathLike) -> str:
    """Log a sweep's report folder as artifacts (`report/...`) of its MLflow parent run.

    Returns the parent run id; raises `LookupError` when the store has no such sweep. Files
    logged before under the same names are replaced (the artifact store overwrites by path).
    """
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        raise LookupError(f"no MLflow store at {db}; has the sweep {sweep_name!r} run?")
    from mlflow import MlflowClient

    quiet_mlflow()
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(sweep_name)
    if exp is None:
        raise LookupError(f"no MLflow experiment named {sweep_name!r} in {tracking_uri}")
    parents = [r for r in client.search_runs([exp.experiment_id],
                                             filter_string=f"tags.{ROLE_TAG} = 'parent'")
               if r.data.tags.get(SWEEP_TAG) == sweep_name]
    if not parents:
        raise LookupError(f"the MLflow experiment {sweep_name!r} has no parent run")
    run_id = parents[0].info.run_id
    client.log_artifacts(run_id, str(report_dir), artifact_path="report")
    return run_id


def quiet_mlflow() -> None:
    """MLflow logs schema migrations and run links at INFO; the progress view owns the terminal."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # A failed store write is raised to the sink (one line in the sweep's summary); MLflow would
    # also log it with its whole SQL statement and traceback.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
