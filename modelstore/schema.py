"""The store's tables as SQLAlchemy Core metadata, rendering for Postgres and SQLite.

The seed's columns keep their names and types; everything predq adds is nullable or
defaulted, so the seed's INSERTs and monitoring SQL run unchanged.
`python -m modelstore.schema` prints the Postgres DDL kept in sql/schema.sql.
"""

from __future__ import annotations

import sys
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    false,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from modelstore import logddl
from modelstore.defaults import DEFAULT_MODEL_NAME, SCHEMA_VERSION

metadata = MetaData()

_NOW = text("CURRENT_TIMESTAMP")
_DEFAULT_NAME = text(f"'{DEFAULT_MODEL_NAME}'")
# BYTEA and JSONB on Postgres, BLOB and JSON text on SQLite.
Binary = LargeBinary().with_variant(postgresql.BYTEA(), "postgresql")
Json = JSON().with_variant(postgresql.JSONB(), "postgresql")

schema_info = Table(
    "predq_schema",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("applied_at", DateTime, server_default=_NOW),
)

model_runs = Table(
    "model_runs",
    metadata,
    Column("run_id", String(255), primary_key=True),
    Column("model_name", String(100), nullable=False, server_default=_DEFAULT_NAME),
    Column("source", String(255)),
    Column("created_at", DateTime, server_default=_NOW),
)

model_artifacts = Table(
    "model_artifacts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(255), nullable=False),
    Column("model_version", String(50), nullable=False),
    Column("model_type", String(100), nullable=False),
    Column("model_binary", Binary, nullable=False),
    Column("model_size_bytes", Integer),
    Column("accuracy_score", Float),
    Column("rmse_score", Float),
    Column("r2_score", Float),
    Column("is_production", Boolean, server_default=false()),
    Column("deployment_date", DateTime),
    Column("created_at", DateTime, server_default=_NOW),
    Column("updated_at", DateTime, server_default=_NOW),
    # predq additions, all nullable or defaulted.
    Column("model_name", String(100), nullable=False, server_default=_DEFAULT_NAME),
    Column("sha256", String(64)),
    Column("serialization_format", String(20), nullable=False, server_default=text("'joblib'")),
    Column("signature", String(128)),
    Column("feature_schema", Json),
    # The `request_id` of the predq.store_model that stored it (schema 3): a re-sent upload
    # returns this row. NULL for everything else, which the unique index allows many times.
    Column("upload_request_id", String(128)),
    UniqueConstraint("run_id", "model_version"),
    UniqueConstraint("model_name", "model_version", name="uq_model_artifacts_name_version"),
)
Index("idx_model_artifacts_run_id", model_artifacts.c.run_id)
Index("idx_model_artifacts_is_production", model_artifacts.c.is_production)
Index("idx_model_artifacts_model_version", model_artifacts.c.model_version)
UPLOAD_REQUEST_INDEX = Index("uq_model_artifacts_upload_request", model_artifacts.c.model_name,
                             model_artifacts.c.upload_request_id, unique=True)
# EXTERNAL: stored uncompressed out of line. Skips pglz on every load, and lets the loader
# fetch the blob as substrings that read only their own TOAST chunks (blobs.py).
BINARY_STORAGE_DDL = "ALTER TABLE model_artifacts ALTER COLUMN model_binary SET STORAGE EXTERNAL"
event.listen(model_artifacts, "after_create",
             DDL(BINARY_STORAGE_DDL).execute_if(dialect="postgresql"))
# The database itself enforces one production row per model name.
Index(
    "uq_model_artifacts_one_production",
    model_artifacts.c.model_name,
    unique=True,
    postgresql_where=model_artifacts.c.is_production,
    sqlite_where=model_artifacts.c.is_production,
)

model_metrics = Table(
    "model_metrics",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(255), ForeignKey("model_runs.run_id"), nullable=False),
    Column("metric_name", String(100), nullable=False),
    Column("metric_value", Float, nullable=False),
    Column("metric_type", String(50), nullable=False, server_default=text("'validation'")),
    Column("created_at", DateTime, server_default=_NOW),
    UniqueConstraint("run_id", "metric_name", "metric_type"),
)

ROLES = ("production", "canary", "shadow")
"""model_predictions.role: the version served the caller, answered a canary share, or
shadowed production (the champion/challenger issue); rows are 'production' by default."""
LOG_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite: INTEGER keeps the rowid alias


def _log_columns(id_key: bool) -> list[Any]:
    """model_predictions' columns; the Postgres (partitioned) and the SQLite table share them."""
    return [
        Column("id", LOG_ID, Identity(), primary_key=id_key),
        Column("model_version", String(50), nullable=False),
        Column("input_features", Json, nullable=False),
        Column("predicted_value", Float, nullable=False),
        Column("actual_value", Float),
        Column("confidence_score", Float),
        # The partition key on Postgres: the request's time (see modelstore/partitions.py).
        Column("prediction_time", DateTime, nullable=False, server_default=_NOW),
        Column("created_at", DateTime, server_default=_NOW),
        # predq additions.
        Column("request_id", String(128)),
        Column("model_name", String(100), nullable=False, server_default=_DEFAULT_NAME),
        Column("model_sha256", String(64)),
        Column("actual_time", DateTime),
        Column("role", String(16), nullable=False, server_default=text("'production'")),
        CheckConstraint("role IN ('production', 'canary', 'shadow')",
                        name="ck_model_predictions_role"),
    ]


# The metadata every query uses, and the table SQLite creates: unpartitioned, one row per
# (request_id, model_version). Postgres creates pg_model_predictions instead.
model_predictions = Table("model_predictions", metadata, *_log_columns(True))
Index("uq_model_predictions_request_version", model_predictions.c.request_id,
      model_predictions.c.model_version, unique=True).ddl_if(dialect="sqlite")
Index("idx_model_predictions_prediction_time",
      model_predictions.c.prediction_time).ddl_if(dialect="sqlite")

pg_metadata = MetaData()
# Postgres: range-partitioned by prediction_time. Every unique index of a partitioned
# table must hold the partition key, hence the primary key (id, prediction_time) and the
# dedup key (request_id, model_version, prediction_time); DESIGN in partitions.py.
pg_model_predictions = Table(
    "model_predictions", pg_metadata, *_log_columns(False),
    PrimaryKeyConstraint("id", "prediction_time", name="model_predictions_pkey"),
    UniqueConstraint("request_id", "model_version", "prediction_time",
                     name="uq_model_predictions_request_version"),
    postgresql_partition_by="RANGE (prediction_time)",
)
# BRIN: one summary per 128 pages of a time-ordered append log; a few kB per partition
# and nearly free to maintain, where a b-tree cost the writer (bench/log_bench.py).
Index("idx_model_predictions_prediction_time", pg_model_predictions.c.prediction_time,
      postgresql_using="brin")

model_prediction_rollups = Table(
    "model_prediction_rollups",
    metadata,
    Column("model_name", String(100), primary_key=True),
    Column("model_version", String(50), primary_key=True),
    Column("role", String(16), primary_key=True),
    Column("hour", DateTime, primary_key=True),
    Column("predictions", BigInteger, nullable=False),
    Column("labelled", BigInteger, nullable=False),
    Column("sum_predicted", Float, nullable=False),
    Column("sum_abs_error", Float, nullable=False),
    Column("sum_sq_error", Float, nullable=False),
    Column("first_time", DateTime),
    Column("last_time", DateTime),
)

log_state = Table(
    "predq_log_state",
    metadata,
    Column("id", Integer, primary_key=True),
    # Hours before this were in dropped partitions: their rollups are all that is left.
    Column("pruned_before", DateTime),
    Column("updated_at", DateTime, server_default=_NOW),
)

production_pointer = Table(
    "production_pointer",
    metadata,
    Column("model_name", String(100), primary_key=True),
    Column("model_version", String(50), nullable=False),
    Column("artifact_id", Integer, ForeignKey("model_artifacts.id"), nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("updated_at", DateTime, server_default=_NOW),
)

promotion_history = Table(
    "promotion_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(100), nullable=False),
    Column("from_version", String(50)),
    Column("to_version", String(50), nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("action", String(20), nullable=False),
    Column("promoted_by", String(255)),
    Column("reason", Text),
    Column("promoted_at", DateTime, server_default=_NOW),
)
Index("idx_promotion_history_model", promotion_history.c.model_name, promotion_history.c.id)

PREDQ_TABLES = tuple(metadata.tables)


def create_all(conn: Connection) -> None:
    """Create every table (if missing): on Postgres the partitioned log, on SQLite the plain
    one, each with the rollup triggers."""
    if conn.dialect.name == "postgresql":
        metadata.create_all(conn, tables=[t for t in metadata.sorted_tables
                                          if t is not model_predictions])
        pg_metadata.create_all(conn)
        for statement in logddl.PG_LOG_DDL:
            conn.exec_driver_sql(statement)
    else:
        metadata.create_all(conn)
        for statement in logddl.SQLITE_LOG_DDL:
            conn.exec_driver_sql(statement)


def postgres_ddl() -> str:
    """The Postgres DDL of this metadata, as kept in sql/schema.sql."""
    dialect = postgresql.dialect()
    parts = ["-- Generated by `make schema` from modelstore/schema.py. Do not edit by hand.\n"]
    for table in metadata.sorted_tables:
        if table is model_predictions:
            table = pg_model_predictions
        parts.append(str(CreateTable(table).compile(dialect=dialect)).strip() + ";\n")
        if table is model_artifacts:
            parts.append(BINARY_STORAGE_DDL + ";\n")
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            parts.append(str(CreateIndex(index).compile(dialect=dialect)).strip() + ";\n")
        if table is pg_model_predictions:
            parts += [statement.strip() + ";\n" for statement in logddl.PG_LOG_DDL]
    # Without the version row the store would take this database for an older schema.
    parts.append(f"INSERT INTO {schema_info.name} (version) VALUES ({SCHEMA_VERSION});\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(postgres_ddl())
