"""A new MLflow store is a copy of an empty one MLflow built once for the installed versions:
the same tables and rows as MLflow's own build, pointed at its own artifact folder, whole or not
there at all."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from orchestrator.sinks import mlflow_store
from orchestrator.sinks.mlflow_store import (
    ARTIFACTS_DIR,
    CACHE_ENV,
    create_sqlite_store,
    store_template,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def _contents(db: Path):
    """Everything of a store but the default experiment's creation times. A table's clauses are
    compared as a set: MLflow's own builds list a table's CHECK constraints in varying order."""
    with sqlite3.connect(db) as conn:
        schema = sorted(((kind, name, sorted(line.strip().rstrip(",")
                                             for line in (sql or "").splitlines()))
                         for kind, name, sql in conn.execute(
                             "SELECT type, name, sql FROM sqlite_master")), key=str)
        rows = {table: sorted(conn.execute(f"SELECT * FROM '{table}'"), key=str)
                for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                if table != "experiments"}
        experiments = conn.execute("SELECT experiment_id, name, artifact_location, "
                                   "lifecycle_stage, workspace FROM experiments").fetchall()
    return schema, rows, experiments


def test_a_store_from_the_template_is_the_store_mlflow_builds_there(tmp_path, cache):
    from mlflow import MlflowClient

    first, second = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    create_sqlite_store(first)                  # builds the template, then copies it
    assert store_template().is_file() and store_template().parent == cache
    create_sqlite_store(second)
    built = tmp_path / "b" / "built.db"         # what MLflow itself makes for the second store
    mlflow_store._build_store(built, (second.parent / ARTIFACTS_DIR).as_uri())
    assert _contents(second) == _contents(built)
    assert _contents(second)[2] == [(0, "Default", (second.parent / ARTIFACTS_DIR / "0").as_uri(),
                                     "active", "default")]
    assert _contents(first)[2][0][2] == (first.parent / ARTIFACTS_DIR / "0").as_uri()

    client = MlflowClient(f"sqlite:///{second}")
    run = client.create_run(client.create_experiment("x", artifact_location="file:///tmp/x"))
    client.log_metric(run.info.run_id, "val/top1", 0.5)
    assert client.get_run(run.info.run_id).data.metrics == {"val/top1": 0.5}
    assert client.get_experiment("0").creation_time > 0


def test_with_the_template_kept_mlflow_builds_nothing(tmp_path, cache, monkeypatch):
    create_sqlite_store(tmp_path / "first" / "mlflow.db")

    def no_build(path, artifacts):
        raise AssertionError("MLflow built a store although the template was there")

    monkeypatch.setattr(mlflow_store, "_build_store", no_build)
    db = tmp_path / "second" / "mlflow.db"
    create_sqlite_store(db)
    assert db.is_file() and [p.name for p in db.parent.iterdir()] == ["mlflow.db"]


@pytest.mark.parametrize("damage", ["not-sqlite", "other-store"])
def test_a_damaged_template_is_not_copied_and_the_next_one_is_rebuilt(tmp_path, cache, damage):
    template = store_template()
    template.parent.mkdir(parents=True)
    if damage == "not-sqlite":
        template.write_bytes(b"this is not a database" * 100)
    else:                                       # a store, but not one built as a template
        mlflow_store._build_store(template, (tmp_path / "elsewhere").as_uri())
    db = tmp_path / "s" / "mlflow.db"
    create_sqlite_store(db)
    assert _contents(db)[2][0][2] == (db.parent / ARTIFACTS_DIR / "0").as_uri()
    assert not template.exists()                # dropped: the next store builds a good one
    create_sqlite_store(tmp_path / "t" / "mlflow.db")
    assert template.is_file()
    assert [p.name for p in db.parent.iterdir()] == ["mlflow.db"]


def test_without_a_writable_cache_mlflow_builds_the_store_in_place(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv(CACHE_ENV, str(blocked / "cache"))
    db = tmp_path / "s" / "mlflow.db"
    create_sqlite_store(db)
    assert _contents(db)[2][0][2] == (db.parent / ARTIFACTS_DIR / "0").as_uri()
    assert [p.name for p in db.parent.iterdir()] == ["mlflow.db"]


def test_the_template_is_named_by_the_versions_it_was_built_with(monkeypatch, tmp_path):
    from importlib.metadata import version

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    name = store_template().name
    for package in ("mlflow", "alembic", "sqlalchemy"):
        assert f"{package}{version(package)}" in name
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store_template().parent == tmp_path / "xdg" / "localvit-sweeps"
