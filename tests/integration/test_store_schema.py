"""Applying sql/schema.sql to a fresh Postgres database yields the same tables, columns,
types, defaults, indexes, constraints and blob storage as modelstore's metadata.create_all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from modelstore import logddl, schema
from modelstore.defaults import SCHEMA_VERSION
from tests.conftest import create_database, drop_database

SCHEMA_SQL = Path(__file__).resolve().parents[2] / "sql" / "schema.sql"

def test_schema_sql_builds_the_same_database_as_the_metadata(
        pg_admin: object, raw_engine: Callable[[str], Engine],
        describe_db: Callable[[Connection], dict[str, list[tuple[Any, ...]]]]) -> None:
    from_file, from_metadata = create_database(pg_admin), create_database(pg_admin)
    try:
        with raw_engine(from_file).begin() as conn:
            # psql-equivalent: the whole file as one script through the driver.
            conn.exec_driver_sql(SCHEMA_SQL.read_text())
            file_shape = describe_db(conn)
            version = conn.execute(text("SELECT version FROM predq_schema")).scalar_one()
        with raw_engine(from_metadata).begin() as conn:
            schema.create_all(conn)
            metadata_shape = describe_db(conn)
    finally:
        drop_database(pg_admin, from_file)
        drop_database(pg_admin, from_metadata)
    assert version == SCHEMA_VERSION
    assert {c[0] for c in file_shape["columns"]} == {*schema.PREDQ_TABLES,
                                                     logddl.DEFAULT_PARTITION}
    for aspect in ("columns", "indexes", "constraints", "storage"):
        assert file_shape[aspect] == metadata_shape[aspect], aspect
    assert ("model_artifacts", "model_binary", "e") in file_shape["storage"]


@pytest.mark.parametrize("table", ["model_artifacts", "model_predictions"])
def test_the_seed_columns_keep_their_types(pg_url: str, raw_engine: Callable[[str], Engine],
                                           table: str) -> None:
    seed = {
        "model_artifacts": {"id": "integer", "run_id": "character varying",
                            "model_version": "character varying",
                            "model_type": "character varying", "model_binary": "bytea",
                            "model_size_bytes": "integer", "accuracy_score": "double precision",
                            "rmse_score": "double precision", "r2_score": "double precision",
                            "is_production": "boolean",
                            "deployment_date": "timestamp without time zone",
                            "created_at": "timestamp without time zone",
                            "updated_at": "timestamp without time zone"},
        # id widened from the seed's integer (issue 11: 2^31 ids last under a day in bulk).
        "model_predictions": {"id": "bigint", "model_version": "character varying",
                              "input_features": "jsonb", "predicted_value": "double precision",
                              "actual_value": "double precision",
                              "confidence_score": "double precision",
                              "prediction_time": "timestamp without time zone",
                              "created_at": "timestamp without time zone"},
    }[table]
    with raw_engine(pg_url).begin() as conn:
        schema.create_all(conn)
        found = dict(conn.execute(text(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = :t"), {"t": table}).all())
    assert {name: found[name] for name in seed} == seed
