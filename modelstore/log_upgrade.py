"""`predq db upgrade`, the log's part: rebuild `model_predictions` as schema version 2.

The old table (the seed's, or predq 1's: 32-bit serial ids, one row per request_id) is
renamed aside, the new one is created (on Postgres partitioned by prediction_time, with
partitions for the rows' whole time range; on SQLite plain), every row is copied in one
INSERT ... SELECT keeping its id (on Postgres with the insert trigger off, then the rollups
are built in one GROUP BY; on SQLite the triggers fold each row), the id sequence is
moved past
the highest id, and the old table is dropped.

Lock and time: the RENAME takes an ACCESS EXCLUSIVE lock on the old table until the
upgrade commits, so writers wait (and workers spool) for the whole copy: 33 s per million
rows on this project's shared 2-core machine under a load average of 11
(bench/log_bench.py measures it; an idle machine does better).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, inspect

from modelstore import logddl, partitions, rollups, schema
from modelstore.predictions import utc_now

OLD = "model_predictions_before_v2"
_LOG = "model_predictions"


def rebuild(conn: Connection, grain: str) -> list[str]:
    """Create the log, or rebuild an older one with its rows; returns the steps done."""
    if _LOG not in inspect(conn).get_table_names():
        _create(conn)
        return [f"created table {_LOG}"]
    have = {c["name"] for c in inspect(conn).get_columns(_LOG)}
    conn.exec_driver_sql(f"ALTER TABLE {_LOG} RENAME TO {OLD}")
    _rename_old_indexes(conn)
    _create(conn)
    first, last = conn.exec_driver_sql(
        f"SELECT MIN({_time_expr(conn)}), MAX({_time_expr(conn)}) FROM {OLD}").one()
    made: list[str] = []
    if conn.dialect.name == "postgresql" and first is not None:
        made = partitions.create_range(conn, _as_time(first), max(_as_time(last), utc_now()),
                                       grain)
    columns = [c.name for c in schema.model_predictions.columns
               if c.name in have and c.name != "prediction_time"]
    names = ", ".join(columns)
    postgres = conn.dialect.name == "postgresql"
    if postgres:  # one GROUP BY after the copy beats folding a 1M-row transition table
        conn.exec_driver_sql(f"ALTER TABLE {_LOG} DISABLE TRIGGER predq_rollup_insert")
    copied = conn.exec_driver_sql(
        f"INSERT INTO {_LOG} ({names}, prediction_time) "
        f"SELECT {names}, {_time_expr(conn)} FROM {OLD}").rowcount
    if postgres:
        conn.exec_driver_sql(f"ALTER TABLE {_LOG} ENABLE TRIGGER predq_rollup_insert")
        rollups.rebuild(conn)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{_LOG}', 'id'), "
                             f"COALESCE((SELECT MAX(id) FROM {_LOG}), 0) + 1, false)")
    conn.exec_driver_sql(f"DROP TABLE {OLD}")
    kind = "a partitioned" if conn.dialect.name == "postgresql" else "an"
    return [f"rebuilt {_LOG} as {kind} table with bigint ids, a role column and rollups: "
            f"copied {copied} rows into {len(made)} new partitions"]


def _time_expr(conn: Connection) -> str:
    # The seed's prediction_time may be NULL; it is the partition key now (UTC, naive).
    now = "timezone('UTC', now())" if conn.dialect.name == "postgresql" else "CURRENT_TIMESTAMP"
    return f"COALESCE(prediction_time, created_at, {now})"


def _as_time(value: object) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value  # type: ignore[return-value]


def _create(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        schema.pg_model_predictions.create(conn)
        statements = logddl.PG_LOG_DDL
    else:
        schema.model_predictions.create(conn)
        statements = logddl.SQLITE_LOG_DDL
    for statement in statements:
        conn.exec_driver_sql(statement)


def _rename_old_indexes(conn: Connection) -> None:
    """Index (and, on Postgres, constraint) names are global: free them for the new table."""
    if conn.dialect.name == "postgresql":
        names = conn.exec_driver_sql(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s", (OLD,)).scalars().all()
        for name in names:
            # Renaming a constraint's index renames the constraint too.
            conn.exec_driver_sql(f'ALTER INDEX "{name}" RENAME TO "{name[:40]}_before_v2"')
        return
    for index in inspect(conn).get_indexes(OLD):
        conn.exec_driver_sql(f'DROP INDEX IF EXISTS "{index["name"]}"')
