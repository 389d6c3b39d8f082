"""On SQLite: an empty database gets the schema on first use; an older or foreign one is
refused naming `predq db upgrade`; the upgrade migrates a seed-shaped SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from modelstore import ModelEvaluationDB, ModelLoader, migrate, schema
from modelstore.defaults import SCHEMA_VERSION
from modelstore.errors import SchemaError

SEED_SHAPED = [
    """CREATE TABLE model_artifacts (id INTEGER PRIMARY KEY, run_id VARCHAR(255) NOT NULL,
    model_version VARCHAR(50) NOT NULL, model_type VARCHAR(100) NOT NULL,
    model_binary BLOB NOT NULL, model_size_bytes INTEGER, accuracy_score FLOAT,
    rmse_score FLOAT, r2_score FLOAT, is_production BOOLEAN DEFAULT FALSE,
    deployment_date TIMESTAMP, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, UNIQUE(run_id, model_version))""",
    """CREATE TABLE model_predictions (id INTEGER PRIMARY KEY,
    model_version VARCHAR(50) NOT NULL, input_features JSON NOT NULL,
    predicted_value FLOAT NOT NULL, actual_value FLOAT, confidence_score FLOAT,
    prediction_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)""",
]


def _run(url: str, *statements: str, **params: object) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), params)
    engine.dispose()


def test_empty_database_gets_the_schema(sqlite_url: str) -> None:
    assert ModelEvaluationDB(sqlite_url).list_models() == []
    assert migrate.upgrade(sqlite_url) == []


def test_foreign_tables_are_refused_naming_the_upgrade(sqlite_url: str) -> None:
    _run(sqlite_url, "CREATE TABLE model_predictions (id INTEGER PRIMARY KEY)")
    with pytest.raises(SchemaError, match=r"older schema.*run `predq db upgrade`"):
        ModelEvaluationDB(sqlite_url)
    with pytest.raises(SchemaError, match="lacks the seed guide's columns"):
        migrate.upgrade(sqlite_url)


def test_a_newer_schema_version_is_refused(sqlite_url: str) -> None:
    ModelEvaluationDB(sqlite_url)
    _run(sqlite_url, "INSERT INTO predq_schema (version) VALUES (99)")
    from modelstore.engine import dispose_engines

    dispose_engines()
    with pytest.raises(SchemaError,
                       match=f"schema version 99, this predq needs {SCHEMA_VERSION}"):
        ModelEvaluationDB(sqlite_url)
    with pytest.raises(SchemaError, match=f"newer than this predq's {SCHEMA_VERSION}"):
        migrate.upgrade(sqlite_url)


def test_upgrade_of_a_seed_shaped_sqlite_database(sqlite_url: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from modelstore.artifacts import serialize

    monkeypatch.setenv("PREDQ_MODEL_DIR", str(tmp_path / "models"))
    blob = serialize({"model": "legacy"})
    _run(sqlite_url, *SEED_SHAPED)
    _run(sqlite_url, "INSERT INTO model_artifacts (run_id, model_version, model_type, "
         "model_binary, is_production) VALUES ('r1', '20260101', 'Dict', :b, TRUE)", b=blob)
    _run(sqlite_url, "INSERT INTO model_predictions (model_version, input_features, "
         "predicted_value) VALUES ('20260101', '{\"x\": 1}', 1.0)")
    ddl = schema.postgres_ddl()
    steps = migrate.upgrade(sqlite_url)
    assert schema.postgres_ddl() == ddl  # the shared metadata was not altered
    assert any(s.startswith("rebuilt model_predictions as an table") and "copied 1 rows" in s
               for s in steps), steps
    assert "recorded sha256 of 1 legacy artifacts (trusted as stored)" in steps
    assert "production pointer for 'default' at '20260101' (generation 1)" in steps
    assert migrate.upgrade(sqlite_url) == []
    loader = ModelLoader(sqlite_url)
    assert loader.load_production_model() == {"model": "legacy"}
    assert loader.fallback_used is False
    db = ModelEvaluationDB(sqlite_url)
    rows = [{"request_id": "a", "model_version": "20260101", "input_features": {"x": 2},
             "predicted_value": 2.0}]
    assert db.store_predictions(rows * 2) == 1
    assert db.prediction_stats()[0]["predictions"] == 2
