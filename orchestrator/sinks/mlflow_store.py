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
import uuid
from pathlib import Path

from orchestrator.layout import ARTIFACTS_DIR, DB_FILE
from orchestrator.sinks import mlflow_view
from orchestrator.sinks.mlflow_view import browse_url

__all__ = ["ARTIFACTS_DIR", "DB_FILE", "ROLE_TAG", "SWEEP_TAG", "create_sqlite_store",
           "default_tracking_uri", "log_report", "mlflow_ui_command", "quiet_mlflow", "sqlite_path",
           "sweep_browse_url"]

ROLE_TAG = "sweep_role"        # "parent" | "trial"
SWEEP_TAG = "sweep_name"


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

    MLflow builds a new store's tables and then migrates them step by step; some steps copy a
    table into `_alembic_tmp_<table>` and swap it in. A driver killed in between leaves a store
    that every later open fails on ("table _alembic_tmp_experiments already exists"): the
    resumed sweep, `sync` and the UI could no longer use it. So the store is built under a
    temporary name beside it and linked into place once MLflow is done with it. Of two drivers
    creating it at once, the first link wins and the other's copy is dropped; copies that killed
    drivers left behind are removed.
    """
    if db.exists():
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    for stale in db.parent.glob(f".{db.name}.*.new"):
        if not _process_alive(stale.name.split(".")[-3]):
            stale.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.new")
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    try:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", (db.parent / ARTIFACTS_DIR).as_uri())
        store.engine.dispose()
        with contextlib.suppress(FileExistsError):     # another driver's store got there first
            os.link(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def _process_alive(pid: str) -> bool:
    if not pid.isdigit():
        return True                 # not one of ours: leave it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
