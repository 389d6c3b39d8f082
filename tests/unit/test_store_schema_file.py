"""sql/schema.sql is exactly the Postgres DDL of modelstore's table metadata."""

from __future__ import annotations

from pathlib import Path

from modelstore import schema

SCHEMA_SQL = Path(__file__).resolve().parents[2] / "sql" / "schema.sql"


def test_schema_sql_matches_the_metadata() -> None:
    assert SCHEMA_SQL.read_text() == schema.postgres_ddl(), (
        "sql/schema.sql has drifted from modelstore/schema.py; run `make schema`")


def test_ddl_keeps_the_seed_columns_and_the_one_production_index() -> None:
    ddl = schema.postgres_ddl()
    for column in ("model_binary BYTEA NOT NULL", "input_features JSONB NOT NULL",
                   "is_production BOOLEAN DEFAULT false", "UNIQUE (run_id, model_version)",
                   "UNIQUE (request_id)"):
        assert column in ddl
    assert ("CREATE UNIQUE INDEX uq_model_artifacts_one_production ON model_artifacts "
            "(model_name) WHERE is_production;") in ddl
    assert schema.BINARY_STORAGE_DDL + ";" in ddl
