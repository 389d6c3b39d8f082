"""`predq db upgrade` of a predq 2 database: model_artifacts gains upload_request_id and its
unique index (schema 3), rows kept; refused until then; twice is a no-op."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from modelstore import ModelEvaluationDB, migrate
from modelstore.engine import dispose_engines
from modelstore.errors import SchemaError

SCHEMA_V2 = Path(__file__).resolve().parents[2] / "sql" / "legacy_schema_v2.sql"
V3_STEPS = ["added column model_artifacts.upload_request_id",
            "created index uq_model_artifacts_upload_request",
            "recorded predq schema version 3"]
Describe = Callable[[Connection], dict[str, list[tuple[Any, ...]]]]


def _v2_artifact(conn: Connection, blob: bytes) -> None:
    conn.execute(text(
        "INSERT INTO model_artifacts (run_id, model_version, model_type, model_binary, "
        "model_size_bytes, model_name) VALUES ('run-1', 'v1', 'RandomForest', :b, :n, "
        "'default')"), {"b": blob, "n": len(blob)})


def _upgraded_twice_then_dedups(url: str, blob: bytes) -> None:
    with pytest.raises(SchemaError, match=r"version 2, this predq needs 3; run `predq db upgrade`"):
        ModelEvaluationDB(url)
    assert migrate.upgrade(url) == V3_STEPS
    assert migrate.upgrade(url) == []
    with ModelEvaluationDB(url) as db:
        assert [m["model_version"] for m in db.list_models()] == ["v1"]
        first = db.store_model("run-2", "v2", "RandomForest", blob, upload_request_id="up-1")
        again = db.store_model("run-3", "v3", "RandomForest", blob + b" ",
                               upload_request_id="up-1")
        # NULL request ids (the old row, direct stores) may repeat.
        db.store_model("run-4", "v4", "RandomForest", blob)
        assert (first.reused, again.reused, again.model_version) == (False, True, "v2")
        assert len(db.list_models()) == 3


def test_a_v2_postgres_database_upgrades_to_3(
        pg_url: str, pipeline_bytes: bytes, raw_engine: Callable[[str], Engine],
        describe_db: Describe, fresh_shape: Callable[[], Any]) -> None:
    with raw_engine(pg_url).begin() as conn:
        conn.exec_driver_sql(SCHEMA_V2.read_text())
        _v2_artifact(conn, pipeline_bytes)
    _upgraded_twice_then_dedups(pg_url, pipeline_bytes)

    expected = fresh_shape()  # a database predq created itself
    with raw_engine(pg_url).connect() as conn:
        migrated = describe_db(conn)
    for aspect, rows in expected.items():
        assert sorted(map(str, migrated[aspect])) == sorted(map(str, rows)), aspect


def test_a_v2_sqlite_database_upgrades_to_3(sqlite_url: str, pipeline_bytes: bytes,
                                             raw_engine: Callable[[str], Engine]) -> None:
    ModelEvaluationDB(sqlite_url)  # predq 3's schema, taken back to 2 below
    with raw_engine(sqlite_url).begin() as conn:
        conn.exec_driver_sql("DROP INDEX uq_model_artifacts_upload_request")
        conn.exec_driver_sql("ALTER TABLE model_artifacts DROP COLUMN upload_request_id")
        conn.exec_driver_sql("UPDATE predq_schema SET version = 2")
        _v2_artifact(conn, pipeline_bytes)
    dispose_engines()  # forget that this URL's schema was checked
    _upgraded_twice_then_dedups(sqlite_url, pipeline_bytes)
