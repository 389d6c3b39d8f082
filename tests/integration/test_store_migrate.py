"""A database made with the seed guide's exact CREATE TABLEs: refused until `upgrade`, then
migrated in place (rows kept, digests recorded, production pointer created), idempotently."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from modelstore import ModelEvaluationDB, ModelLoader, migrate, schema
from modelstore.defaults import SCHEMA_VERSION
from modelstore.errors import ArtifactSignatureError, SchemaError

DAY_PARTITION = re.compile(r"model_predictions_d\d{8}")
Describe = Callable[[Connection], dict[str, list[tuple[Any, ...]]]]

# Verbatim from the seed guide's "Database Tables" section.
SEED_DDL = """
CREATE TABLE model_artifacts (
    id SERIAL PRIMARY KEY,
    run_id VARCHAR(255) NOT NULL,
    model_version VARCHAR(50) NOT NULL,
    model_type VARCHAR(100) NOT NULL,       -- e.g., RandomForest
    model_binary BYTEA NOT NULL,             -- Serialized model (joblib)
    model_size_bytes INTEGER,
    accuracy_score FLOAT,
    rmse_score FLOAT,
    r2_score FLOAT,
    is_production BOOLEAN DEFAULT FALSE,
    deployment_date TIMESTAMP,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(run_id, model_version)
);

CREATE TABLE model_predictions (
    id SERIAL PRIMARY KEY,
    model_version VARCHAR(50) NOT NULL,
    input_features JSONB NOT NULL,
    predicted_value FLOAT NOT NULL,
    actual_value FLOAT,
    confidence_score FLOAT,
    prediction_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
"""
_INSERT_ARTIFACT = text(
    "INSERT INTO model_artifacts (run_id, model_version, model_type, model_binary, "
    "model_size_bytes, accuracy_score, rmse_score, r2_score, is_production) VALUES "
    "(:run, :version, 'RandomForest', :blob, :size, 0.8, 3000.0, :r2, :prod)")


def _seed_database(engine: Engine, blobs: list[bytes], production: list[bool]) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(SEED_DDL)
        for n, (blob, prod) in enumerate(zip(blobs, production, strict=True), start=1):
            conn.execute(_INSERT_ARTIFACT, {"run": f"mlflow-run-{n}", "version": f"2026010{n}",
                                            "blob": blob, "size": None if n == 2 else len(blob),
                                            "r2": 0.9 + n / 100, "prod": prod})
        conn.execute(text(
            "INSERT INTO model_predictions (model_version, input_features, predicted_value, "
            "actual_value) VALUES ('20260101', :f, 100.0, 110.0), ('20260101', :f, 200.0, NULL)"),
            {"f": json.dumps({"year": 2020})})


def test_seed_database_is_refused_then_upgraded(
        pg_url: str, model_dir: object, pipeline_bytes: bytes, pipeline_v2_bytes: bytes,
        raw_engine: Callable[[str], Engine], describe_db: Describe,
        fresh_shape: Callable[[], Any]) -> None:
    _seed_database(raw_engine(pg_url), [pipeline_bytes, pipeline_v2_bytes], [True, False])

    with pytest.raises(SchemaError, match="predq db upgrade"):
        ModelEvaluationDB(pg_url)
    loader = ModelLoader(pg_url)
    assert loader.load_production() is None  # no model files either
    assert loader.fallback_used and "SchemaError" in str(loader.fallback_reason)

    ddl = schema.postgres_ddl()
    steps = migrate.upgrade(pg_url)
    assert schema.postgres_ddl() == ddl  # the shared metadata was not altered
    assert "added column model_artifacts.sha256" in steps
    assert ("rebuilt model_predictions as a partitioned table with bigint ids, a role column "
            "and rollups: copied 2 rows into 1 new partitions") in steps  # today's
    assert "created index uq_model_artifacts_one_production" in steps
    assert "recorded sha256 of 2 legacy artifacts (trusted as stored)" in steps
    assert "recorded model_size_bytes of 1 artifacts" in steps
    assert "production pointer for 'default' at '20260101' (generation 1)" in steps
    assert steps[-1] == f"recorded predq schema version {SCHEMA_VERSION}"
    assert migrate.upgrade(pg_url) == []  # idempotent

    with ModelEvaluationDB(pg_url) as db:
        pointer = db.production_pointer()
        history = db.promotion_history()
        assert [m["model_version"] for m in db.list_models()] == ["20260102", "20260101"]
        assert db.get_model("20260102")["model_size_bytes"] == len(pipeline_v2_bytes)
        stats = db.prediction_stats()
    assert (pointer.model_version, pointer.generation) == ("20260101", 1)
    assert [(h["action"], h["to_version"], h["promoted_by"]) for h in history] == [
        ("upgrade", "20260101", "predq db upgrade")]
    assert (stats[0]["predictions"], stats[0]["labelled"], stats[0]["mae"]) == (2, 1, 10.0)

    # The old rows load through the loader, then the store carries on as usual.
    loader = ModelLoader(pg_url)
    assert loader.load_production().model_version == "20260101"
    assert loader.fallback_used is False
    assert loader.load_version("20260102").source == "database"
    with ModelEvaluationDB(pg_url) as db:
        moved = db.set_production_model("20260102")
        db.store_prediction("20260102", {"year": 2021}, 1.0, request_id="r-1")
        db.store_model("mlflow-run-3", "20260103", "RandomForest", pipeline_bytes)
        metrics = db.engine.connect().execute(text(
            "SELECT run_id, metric_name, metric_value FROM model_metrics ORDER BY 1, 2")).all()
    assert (moved.from_version, moved.to_version, moved.generation) == ("20260101", "20260102", 2)
    assert ("mlflow-run-1", "r2", 0.91) in [tuple(m) for m in metrics]

    # Same shape as a database predq created itself.
    expected = fresh_shape()  # a database predq created itself
    with raw_engine(pg_url).connect() as conn:
        migrated = describe_db(conn)
    for aspect, rows in expected.items():
        # The migration made a partition for its rows' day; a fresh database has none yet.
        moved = {r for r in migrated[aspect] if not DAY_PARTITION.match(str(r[0]))}
        assert (moved - set(rows), set(rows) - moved) == (set(), set()), aspect


def test_two_production_rows_refuse_the_upgrade_and_change_nothing(
        pg_url: str, pipeline_bytes: bytes, pipeline_v2_bytes: bytes,
        raw_engine: Callable[[str], Engine], describe_db: Describe) -> None:
    engine = raw_engine(pg_url)
    _seed_database(engine, [pipeline_bytes, pipeline_v2_bytes], [True, True])
    with engine.connect() as conn:
        before = describe_db(conn)
    with pytest.raises(SchemaError) as refused:
        migrate.upgrade(pg_url)
    message = str(refused.value)
    assert "model 'default': '20260101' (id 1), '20260102' (id 2)" in message
    assert "Nothing was changed" in message
    with engine.connect() as conn:
        assert describe_db(conn) == before
    assert "sha256" not in {c[1] for c in before["columns"]}


def test_a_version_stored_twice_refuses_the_upgrade(
        pg_url: str, pipeline_bytes: bytes, raw_engine: Callable[[str], Engine]) -> None:
    engine = raw_engine(pg_url)
    _seed_database(engine, [pipeline_bytes], [False])
    with engine.begin() as conn:  # the seed allows one version under two run_ids
        conn.execute(_INSERT_ARTIFACT, {"run": "other-run", "version": "20260101",
                                        "blob": pipeline_bytes, "size": 1, "r2": 0.5,
                                        "prod": False})
    with pytest.raises(SchemaError, match=r"'default'@'20260101' \(2 rows\)"):
        migrate.upgrade(pg_url)


def test_upgrade_signs_legacy_rows_with_the_given_key(
        pg_url: str, model_dir: object, pipeline_bytes: bytes,
        raw_engine: Callable[[str], Engine]) -> None:
    _seed_database(raw_engine(pg_url), [pipeline_bytes], [True])
    assert "signed 1 legacy artifacts with the given key" in migrate.upgrade(
        pg_url, signing_key=b"k1")
    assert ModelLoader(pg_url, signing_key=b"k1").load_version("20260101").artifact is not None
    with pytest.raises(ArtifactSignatureError):
        ModelLoader(pg_url, signing_key=b"another key").load_version("20260101")


def test_upgrade_of_an_empty_or_current_database(store_url: str) -> None:
    steps = migrate.upgrade(store_url)
    assert "created table model_artifacts" in steps and len(steps) == 10
    assert migrate.upgrade(store_url) == []
    ModelEvaluationDB(store_url).list_models()  # accepted by the store as its own
