"""`predq db upgrade`: bring a database made from the seed guide's DDL to predq's schema.

The seed guide's `model_artifacts` and `model_predictions` (and whatever else exists) are
kept with their rows; predq's additive columns, tables, constraints and indexes are added,
and the schema version row is written last. Everything runs in one transaction on
Postgres (DDL is transactional there), so a refused upgrade changes nothing. A database
already at this version is left alone: running it twice is a no-op.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Connection, Table, func, inspect, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import AddConstraint, CreateColumn, UniqueConstraint

from modelstore import artifacts, defaults, log_upgrade, schema
from modelstore.engine import (
    SCHEMA_LOCK_KEY,
    get_engine,
    redact_url,
    translate_errors,
)
from modelstore.errors import SchemaError

log = logging.getLogger(__name__)

A = schema.model_artifacts
UPGRADE_ACTOR = "predq db upgrade"
# The seed guide's columns: a table that lacks one is foreign, not an older predq.
SEED_COLUMNS = {
    "model_artifacts": ("id", "run_id", "model_version", "model_type", "model_binary",
                        "model_size_bytes", "accuracy_score", "rmse_score", "r2_score",
                        "is_production", "deployment_date", "created_at", "updated_at"),
    "model_predictions": ("id", "model_version", "input_features", "predicted_value",
                          "actual_value", "confidence_score", "prediction_time", "created_at"),
}
_SEED_METRICS = (("accuracy", A.c.accuracy_score), ("rmse", A.c.rmse_score),
                 ("r2", A.c.r2_score))


def upgrade(database_url: str, *, signing_key: artifacts.Keys = None,
            connect_timeout_s: int = defaults.CONNECT_TIMEOUT_S,
            grain: str = defaults.LOG_PARTITION) -> list[str]:
    """Migrate the database at `database_url`; returns the steps applied ([] if none).

    Artifacts stored without a SHA-256 get one computed from their bytes as they are now:
    they are TRUSTED on upgrade, so run it only on a database whose contents you vouch
    for. With `signing_key`, those rows are HMAC-signed as well (else a worker with
    PREDQ_SIGNING_KEY set refuses them as unsigned).

    Refuses, changing nothing, when two rows are flagged production for one model name or
    one version is stored twice (predq's constraints would not hold); the message lists them.
    """
    engine = get_engine(database_url, connect_timeout_s, check_schema=False)
    with translate_errors("upgrading the schema", url=redact_url(database_url)), \
            engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        steps = _upgrade(conn, signing_key, grain)
    for step in steps:
        log.info("upgrade of %s: %s", redact_url(database_url), step)
    return steps


def _upgrade(conn: Connection, signing_key: artifacts.Keys, grain: str) -> list[str]:
    existing = set(inspect(conn).get_table_names())
    recorded = _recorded_version(conn) if schema.schema_info.name in existing else None
    if recorded == defaults.SCHEMA_VERSION:
        return []
    if recorded is not None:
        return _from_predq(conn, recorded, existing, grain) + _record_version(conn)
    _check_seed_tables(conn, existing)
    if A.name in existing:
        _check_production_flags(conn)
        _check_versions_unique(conn)
    steps: list[str] = []
    for table in schema.metadata.sorted_tables:
        if table.name in existing and table is not schema.model_predictions:
            steps += _add_columns(conn, table)
            steps += _add_unique_constraints(conn, table)
    steps += _create_missing(conn, existing)
    steps += _add_indexes(conn)
    steps += log_upgrade.rebuild(conn, grain)
    if A.name in existing:
        steps += _legacy_artifacts(conn, signing_key)
    return steps + _record_version(conn)


def _from_predq(conn: Connection, recorded: int, existing: set[str], grain: str) -> list[str]:
    """An older predq database: 1 lacks the partitioned log, 2 the upload request ids."""
    steps = _create_missing(conn, existing)
    if recorded < 2:
        steps += log_upgrade.rebuild(conn, grain)
    return steps + _upload_request_ids(conn)


def _upload_request_ids(conn: Connection) -> list[str]:
    """Version 3: model_artifacts.upload_request_id and its unique index."""
    steps = _add_columns(conn, A)
    have = {i["name"] for i in inspect(conn).get_indexes(A.name)}
    if schema.UPLOAD_REQUEST_INDEX.name not in have:
        schema.UPLOAD_REQUEST_INDEX.create(conn)
        steps.append(f"created index {schema.UPLOAD_REQUEST_INDEX.name}")
    return steps


def _create_missing(conn: Connection, existing: set[str]) -> list[str]:
    steps = []
    for table in schema.metadata.sorted_tables:
        if table.name not in existing and table is not schema.model_predictions:
            table.create(conn)  # with its indexes (and, on Postgres, the blob's storage)
            steps.append(f"created table {table.name}")
    return steps


def _record_version(conn: Connection) -> list[str]:
    conn.execute(schema.schema_info.insert().values(version=defaults.SCHEMA_VERSION))
    return [f"recorded predq schema version {defaults.SCHEMA_VERSION}"]


def _legacy_artifacts(conn: Connection, signing_key: artifacts.Keys) -> list[str]:
    steps = _binary_storage(conn) + _record_sizes(conn) + _record_digests(conn, signing_key)
    return steps + _add_runs(conn) + _add_metrics(conn) + _point_at_flagged(conn)


def _recorded_version(conn: Connection) -> int | None:
    info = schema.schema_info
    found = conn.execute(select(info.c.version).order_by(info.c.id.desc()).limit(1)).scalar()
    if found is not None and found > defaults.SCHEMA_VERSION:
        raise SchemaError(f"database has predq schema version {found}, newer than this "
                          f"predq's {defaults.SCHEMA_VERSION}; upgrade predq instead")
    if found is not None and found < 1:
        raise SchemaError(f"database has predq schema version {found}, which this predq "
                          f"cannot migrate from (it knows only {defaults.SCHEMA_VERSION})")
    return found


def _columns(conn: Connection, table: str) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(table)}


def _check_seed_tables(conn: Connection, existing: set[str]) -> None:
    for table, required in SEED_COLUMNS.items():
        if table not in existing:
            continue
        missing = [c for c in required if c not in _columns(conn, table)]
        if missing:
            raise SchemaError(f"table {table} lacks the seed guide's columns {missing}: a "
                              "foreign schema predq cannot upgrade; migrate it by hand")


def _name_expr(conn: Connection) -> Any:
    """model_name, or the default for a seed table that has no such column yet."""
    if "model_name" in _columns(conn, A.name):
        return A.c.model_name
    return literal(defaults.DEFAULT_MODEL_NAME)


def _check_production_flags(conn: Connection) -> None:
    name = _name_expr(conn)
    rows = conn.execute(select(name, A.c.id, A.c.model_version)
                        .where(A.c.is_production.is_(True)).order_by(A.c.id)).all()
    by_name: dict[str, list[str]] = {}
    for model, artifact_id, version in rows:
        by_name.setdefault(model, []).append(f"{version!r} (id {artifact_id})")
    clashes = {model: flagged for model, flagged in by_name.items() if len(flagged) > 1}
    if clashes:
        listed = "; ".join(f"model {m!r}: {', '.join(f)}" for m, f in clashes.items())
        raise SchemaError(
            f"more than one model_artifacts row is flagged is_production for one model name "
            f"({listed}); set is_production = FALSE on all but one of each and run "
            f"`{UPGRADE_ACTOR}` again. Nothing was changed")


def _check_versions_unique(conn: Connection) -> None:
    name = _name_expr(conn)
    # Postgres refuses to GROUP BY a constant: a seed table has one name, the default.
    keys = [A.c.model_version] if name is not A.c.model_name else [name, A.c.model_version]
    rows = conn.execute(select(name, A.c.model_version, func.count()).group_by(*keys)
                        .having(func.count() > 1)).all()
    if rows:
        listed = ", ".join(f"{m!r}@{v!r} ({n} rows)" for m, v, n in rows)
        raise SchemaError(
            f"model versions stored more than once under different run_ids: {listed}; predq "
            "needs (model_name, model_version) unique. Rename the duplicates and run "
            f"`{UPGRADE_ACTOR}` again. Nothing was changed")


def _add_columns(conn: Connection, table: Table) -> list[str]:
    have = _columns(conn, table.name)
    steps = []
    for column in table.columns:
        if column.name in have:
            continue
        if not column.nullable and column.server_default is None:
            raise SchemaError(f"table {table.name} lacks column {column.name}, which has no "
                              "default: a foreign schema; migrate it by hand")
        ddl = CreateColumn(column).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")
        steps.append(f"added column {table.name}.{column.name}")
    return steps


def _unique_column_sets(conn: Connection, table: str) -> set[frozenset[str]]:
    found = {frozenset(u["column_names"]) for u in inspect(conn).get_unique_constraints(table)}
    for index in inspect(conn).get_indexes(table):
        partial = index.get("dialect_options", {}).get(f"{conn.dialect.name}_where")
        if index["unique"] and not partial:
            found.add(frozenset(c for c in index["column_names"] if c))
    return found


def _add_unique_constraints(conn: Connection, table: Table) -> list[str]:
    present = _unique_column_sets(conn, table.name)
    steps = []
    for constraint in table.constraints:
        if not isinstance(constraint, UniqueConstraint):
            continue
        cols = [c.name for c in constraint.columns]
        if frozenset(cols) in present:
            continue
        if conn.dialect.name == "sqlite":  # no ALTER TABLE ... ADD CONSTRAINT
            # Plain DDL: an Index() on the table's columns would join the shared metadata.
            name = constraint.name or f"uq_{table.name}_{'_'.join(cols)}"
            conn.exec_driver_sql(
                f"CREATE UNIQUE INDEX {name} ON {table.name} ({', '.join(cols)})")
        else:
            # isolate_from_table=False: the default would strip the constraint from every
            # later CREATE TABLE of this process's metadata.
            conn.execute(AddConstraint(constraint, isolate_from_table=False))
        steps.append(f"added unique constraint on {table.name} ({', '.join(cols)})")
    return steps


def _add_indexes(conn: Connection) -> list[str]:
    steps = []
    for table in schema.metadata.sorted_tables:
        if table is schema.model_predictions:  # rebuilt with its own (log_upgrade.py)
            continue
        have = {i["name"] for i in inspect(conn).get_indexes(table.name)}
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if index.name not in have:
                index.create(conn)
                steps.append(f"created index {index.name}")
    return steps


def _binary_storage(conn: Connection) -> list[str]:
    if conn.dialect.name != "postgresql":
        return []
    storage = conn.exec_driver_sql(
        "SELECT attstorage FROM pg_attribute WHERE attrelid = 'model_artifacts'::regclass "
        "AND attname = 'model_binary'").scalar()
    if storage == "e":
        return []
    conn.exec_driver_sql(schema.BINARY_STORAGE_DDL)
    # Existing values stay compressed; the loader fetches those in one piece.
    return ["set model_artifacts.model_binary STORAGE EXTERNAL (applies to new rows)"]


def _record_sizes(conn: Connection) -> list[str]:
    changed = conn.execute(update(A).where(A.c.model_size_bytes.is_(None))
                           .values(model_size_bytes=func.length(A.c.model_binary))).rowcount
    return [f"recorded model_size_bytes of {changed} artifacts"] if changed else []


def _record_digests(conn: Connection, signing_key: artifacts.Keys) -> list[str]:
    if conn.dialect.name == "postgresql":
        digest = func.encode(func.sha256(A.c.model_binary), "hex")
        changed = conn.execute(update(A).where(A.c.sha256.is_(None))
                               .values(sha256=digest)).rowcount
    else:
        ids = conn.execute(select(A.c.id).where(A.c.sha256.is_(None))).scalars().all()
        for artifact_id in ids:
            blob = conn.execute(select(A.c.model_binary).where(A.c.id == artifact_id)).scalar()
            conn.execute(update(A).where(A.c.id == artifact_id)
                         .values(sha256=artifacts.sha256_hex(blob or b"")))
        changed = len(ids)
    steps = [f"recorded sha256 of {changed} legacy artifacts (trusted as stored)"] if changed \
        else []
    if signing_key is not None:
        unsigned = conn.execute(select(A.c.id, A.c.sha256).where(A.c.signature.is_(None))).all()
        for artifact_id, sha in unsigned:
            conn.execute(update(A).where(A.c.id == artifact_id)
                         .values(signature=artifacts.sign(sha, signing_key)))
        if unsigned:
            steps.append(f"signed {len(unsigned)} legacy artifacts with the given key")
    return steps


def _insert(conn: Connection, table: Table) -> Any:
    return (postgresql.insert(table) if conn.dialect.name == "postgresql"
            else sqlite.insert(table))


def _add_runs(conn: Connection) -> list[str]:
    runs = schema.model_runs
    missing = (select(A.c.run_id, func.min(A.c.model_name))
               .where(A.c.run_id.not_in(select(runs.c.run_id))).group_by(A.c.run_id))
    added = conn.execute(_insert(conn, runs).from_select(["run_id", "model_name"], missing)
                         .on_conflict_do_nothing()).rowcount
    return [f"created {added} model_runs rows for existing artifacts"] if added else []


def _add_metrics(conn: Connection) -> list[str]:
    metrics = schema.model_metrics
    added = 0
    for metric_name, column in _SEED_METRICS:
        rows = (select(A.c.run_id, literal(metric_name), column).where(column.is_not(None))
                .order_by(A.c.id))
        stmt = _insert(conn, metrics).from_select(["run_id", "metric_name", "metric_value"],
                                                  rows)
        added += conn.execute(stmt.on_conflict_do_nothing()).rowcount
    return [f"copied {added} seed scores into model_metrics"] if added else []


def _point_at_flagged(conn: Connection) -> list[str]:
    pointer, history = schema.production_pointer, schema.promotion_history
    flagged = conn.execute(select(A.c.model_name, A.c.model_version, A.c.id).where(
        A.c.is_production.is_(True), A.c.model_name.not_in(select(pointer.c.model_name)))).all()
    for model_name, version, artifact_id in flagged:
        conn.execute(pointer.insert().values(model_name=model_name, model_version=version,
                                             artifact_id=artifact_id, generation=1))
        conn.execute(history.insert().values(
            model_name=model_name, from_version=None, to_version=version, generation=1,
            action="upgrade", promoted_by=UPGRADE_ACTOR,
            reason="is_production flag found by the schema upgrade"))
    return [f"production pointer for {m!r} at {v!r} (generation 1)" for m, v, _ in flagged]

