"""A new MLflow store is a copy of an empty one MLflow built once for the installed versions:
the same tables and rows as MLflow's own build, pointed at its own artifact folder, whole or not
there at all."""

from __future__ import annotations

import shutil
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


@pytest.fixture(scope="module")
def built_template(tmp_path_factory):
    """The first store made with an empty cache folder, and the template it left there (built
    once for the module: MLflow's build takes about 2 s)."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder))
        assert not store_template().exists()
        first = tmp_path_factory.mktemp("first") / "mlflow.db"
        create_sqlite_store(first)
        return store_template(), first


@pytest.fixture
def cache(tmp_path, monkeypatch, built_template):
    """A cache folder of the test's own, holding a copy of the module's template."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    folder.mkdir()
    shutil.copyfile(built_template[0], store_template())
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


def test_a_new_store_is_built_as_the_template_when_there_is_none(built_template):
    template, db = built_template
    assert template.is_file() and db.is_file()
    assert _contents(db)[2][0][2] == (db.parent / ARTIFACTS_DIR / "0").as_uri()
    assert [p.name for p in template.parent.iterdir()] == [template.name]
    assert [p.name for p in db.parent.iterdir()] == ["mlflow.db"]


def test_a_store_from_the_template_is_the_store_mlflow_builds_there(tmp_path, cache):
    from mlflow import MlflowClient

    db = tmp_path / "s" / "mlflow.db"
    create_sqlite_store(db)
    built = tmp_path / "s" / "built.db"         # what MLflow itself makes for this store
    mlflow_store._build_store(built, (db.parent / ARTIFACTS_DIR).as_uri())
    assert _contents(db) == _contents(built)
    assert _contents(db)[2] == [(0, "Default", (db.parent / ARTIFACTS_DIR / "0").as_uri(),
                                 "active", "default")]

    client = MlflowClient(f"sqlite:///{db}")
    run = client.create_run(client.create_experiment("x", artifact_location="file:///tmp/x"))
    client.log_metric(run.info.run_id, "val/top1", 0.5)
    assert client.get_run(run.info.run_id).data.metrics == {"val/top1": 0.5}
    assert client.get_experiment("0").creation_time > 0


def test_with_the_template_kept_mlflow_builds_nothing(tmp_path, cache, monkeypatch):
    def no_build(path, artifacts):
        raise AssertionError("MLflow built a store although the template was there")

    monkeypatch.setattr(mlflow_store, "_build_store", no_build)
    for name in ("a", "b"):
        db = tmp_path / name / "mlflow.db"
        create_sqlite_store(db)
        assert _contents(db)[2][0][2] == (db.parent / ARTIFACTS_DIR / "0").as_uri()
        assert [p.name for p in db.parent.iterdir()] == ["mlflow.db"]


@pytest.mark.parametrize("damage", ["not-sqlite", "other-store"])
def test_a_damaged_template_is_built_again(tmp_path, cache, damage, monkeypatch):
    template = store_template()
    if damage == "not-sqlite":
        template.write_bytes(b"this is not a database" * 100)
    else:                                       # a store, but one already pointed elsewhere
        mlflow_store._point_default_experiment(template, (tmp_path / "elsewhere").as_uri())
    builds = []
    build = mlflow_store._build_store
    monkeypatch.setattr(mlflow_store, "_build_store",
                        lambda path, artifacts: builds.append(artifacts) or build(path, artifacts))
    db = tmp_path / "s" / "mlflow.db"
    create_sqlite_store(db)
    assert builds == [mlflow_store._TEMPLATE_ARTIFACTS]     # the template, once
    assert _contents(db)[2][0][2] == (db.parent / ARTIFACTS_DIR / "0").as_uri()
    assert [p.name for p in db.parent.iterdir()] == ["mlflow.db"]
    create_sqlite_store(tmp_path / "t" / "mlflow.db")
    assert len(builds) == 1


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
