"""The prediction log's time partitions on Postgres: created ahead, dropped for retention.

The partition key is `prediction_time`, the request's time. The producer stamps it into
the message (`request_time`), so a redelivered or re-sent message carries the same time,
lands in the same partition and is deduplicated exactly by the unique index
(request_id, model_version, prediction_time). A raw client that sends no request_time
gets the worker's first-seen time; its redelivery has another time (maybe in the next
partition), so such "loose" rows are deduplicated by (request_id, model_version) over
LOOSE_DEDUP_WINDOW_S, probing the partitions that window spans (pglog.py).

A row whose time has no partition (a straggler from far back, a clock gone wrong) lands in
the default partition and is counted in the rollups like any other. Retention drops
whole partitions (DETACH, then DROP: never DELETE); the rollups already hold their
figures (logddl.py), so per-version history outlives retention. The default partition
is never dropped.

SQLite (the demo) has one unpartitioned table: these functions do nothing there.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from modelstore import defaults, logddl
from modelstore.errors import InvalidInput, StoreError
from modelstore.predictions import utc_now

log = logging.getLogger(__name__)

GRAINS = ("day", "week", "month")
PARTITION_LOCK_KEY = 7301996
"""Advisory lock held while partitions are created or dropped (one maintainer at a time)."""
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime
    end: datetime


def check_grain(grain: str) -> str:
    if grain not in GRAINS:
        raise InvalidInput(f"PREDQ_LOG_PARTITION: expected one of {', '.join(GRAINS)}, "
                           f"got {grain!r:.40}")
    return grain


def period_start(when: datetime, grain: str) -> datetime:
    """The start of the partition period holding `when`."""
    day = when.replace(hour=0, minute=0, second=0, microsecond=0)
    if grain == "week":
        return day - timedelta(days=day.weekday())
    if grain == "month":
        return day.replace(day=1)
    return day


def next_start(start: datetime, grain: str) -> datetime:
    if grain == "week":
        return start + timedelta(days=7)
    if grain == "month":
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return start + timedelta(days=1)


def partition_name(start: datetime, grain: str) -> str:
    return f"model_predictions_{grain[0]}{start:%Y%m%d}"


def is_partitioned(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.exec_driver_sql(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table "
        "WHERE partrelid = to_regclass('model_predictions'))").scalar())


def list_partitions(conn: Connection) -> list[Partition]:
    """The log's range partitions, oldest first (the default partition is not listed)."""
    rows = conn.exec_driver_sql(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'model_predictions'::regclass").all()
    found = []
    for name, bound in rows:
        match = _BOUND.search(bound or "")
        if match:
            found.append(Partition(name, datetime.fromisoformat(match.group(1)),
                                   datetime.fromisoformat(match.group(2))))
    return sorted(found, key=lambda p: p.start)


def ensure_ahead(engine: Engine, grain: str, ahead: int, now: datetime | None = None
                 ) -> list[str]:
    """Create the current period's partition and the next `ahead`; returns names created."""
    check_grain(grain)
    now = now or utc_now()
    created: list[str] = []
    start = period_start(now, grain)
    for _ in range(ahead + 1):
        end = next_start(start, grain)
        with engine.begin() as conn:
            if not is_partitioned(conn):
                return created
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK_KEY,))
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {defaults.PRUNE_LOCK_TIMEOUT_MS}")
            if not any(p.start < end and start < p.end for p in list_partitions(conn)):
                created.append(_create(conn, start, end, grain))
        start = end
    for name in created:
        log.info("created prediction log partition %s", name)
    return created


def create_range(conn: Connection, first: datetime, last: datetime, grain: str) -> list[str]:
    """In the caller's transaction: partitions for every period from `first` to `last`
    not covered yet (the migration, for the rows it moves)."""
    created = []
    start = period_start(first, grain)
    have = list_partitions(conn)
    while start <= last:
        end = next_start(start, grain)
        if not any(p.start < end and start < p.end for p in have):
            created.append(_create(conn, start, end, grain))
        start = end
    return created


def _create(conn: Connection, start: datetime, end: datetime, grain: str) -> str:
    name = partition_name(start, grain)
    bounds = f"FROM ('{start.isoformat(' ')}') TO ('{end.isoformat(' ')}')"
    stragglers = conn.exec_driver_sql(
        f"SELECT EXISTS (SELECT 1 FROM {logddl.DEFAULT_PARTITION} "
        "WHERE prediction_time >= %s AND prediction_time < %s)", (start, end)).scalar()
    if not stragglers:
        conn.exec_driver_sql(f"CREATE TABLE {name} PARTITION OF model_predictions "
                             f"FOR VALUES {bounds}")
        return name
    # Rows already caught by the default partition move into the new one: straight
    # between the partitions, so the parent's rollup triggers (rightly) do not fire.
    conn.exec_driver_sql(f"CREATE TABLE {name} (LIKE model_predictions INCLUDING DEFAULTS "
                         "INCLUDING CONSTRAINTS)")
    conn.exec_driver_sql(
        f"WITH moved AS (DELETE FROM {logddl.DEFAULT_PARTITION} WHERE prediction_time >= %s "
        f"AND prediction_time < %s RETURNING *) INSERT INTO {name} SELECT * FROM moved",
        (start, end))
    conn.exec_driver_sql(f"ALTER TABLE model_predictions ATTACH PARTITION {name} "
                         f"FOR VALUES {bounds}")
    return name


def parse_age(text: str) -> timedelta:
    """'30d', '12h', '2w' as a timedelta; InvalidInput names the argument."""
    match = re.fullmatch(r"\s*(\d+)\s*([hdw])\s*", text or "")
    if not match:
        raise InvalidInput(f"--older-than: expected a number and a unit h, d or w (e.g. 30d), "
                           f"got {text!r:.40}")
    n, unit = int(match.group(1)), match.group(2)
    return timedelta(hours=n) if unit == "h" else timedelta(days=n * (7 if unit == "w" else 1))


def droppable(partitions: list[Partition], older_than: timedelta, grain: str, *,
              force: bool = False, now: datetime | None = None) -> list[Partition]:
    """The partitions wholly older than now - older_than; refuses (unless `force`) an age
    that would leave nothing before the current period, or cut into it."""
    now = now or utc_now()
    cutoff = now - older_than
    if not force and (older_than <= timedelta(0) or cutoff > period_start(now, grain)):
        raise InvalidInput(
            f"--older-than {_age(older_than)}: would drop every partition before the current "
            f"{grain} (cutoff {cutoff:%Y-%m-%d %H:%M} UTC is inside it); pass --force to "
            "mean it")
    return [p for p in partitions if p.end <= cutoff]


def _age(age: timedelta) -> str:
    return f"{age.days}d" if age.seconds == 0 else f"{age.total_seconds() / 3600:g}h"


def prune(engine: Engine, older_than: timedelta, grain: str, *, force: bool = False,
          now: datetime | None = None) -> list[str]:
    """Drop partitions wholly older than `older_than`; returns the names dropped.

    Each one is DETACHed and DROPped in its own short transaction. DETACH needs a brief
    ACCESS EXCLUSIVE lock on the log, so it waits at most PRUNE_LOCK_TIMEOUT_MS (writers
    queue behind a waiting lock request) and, if it cannot have it, fails naming the
    partition: run prune again.
    """
    dropped: list[str] = []
    with engine.connect() as conn:
        if not is_partitioned(conn):
            return dropped
        doomed = droppable(list_partitions(conn), older_than, grain, force=force, now=now)
    for part in doomed:
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK_KEY,))
                if not any(p.name == part.name for p in list_partitions(conn)):
                    continue  # another process dropped it meanwhile
                conn.exec_driver_sql(
                    f"SET LOCAL lock_timeout = {defaults.PRUNE_LOCK_TIMEOUT_MS}")
                conn.exec_driver_sql(f"ALTER TABLE model_predictions DETACH PARTITION "
                                     f"{part.name}")
                conn.exec_driver_sql(f"DROP TABLE {part.name}")
                _mark_pruned(conn, part.end)
        except Exception as exc:
            if "lock timeout" in str(exc):
                raise StoreError(f"prune: partition {part.name} is busy (lock timeout); "
                                 f"dropped {len(dropped)} so far; run prune again") from exc
            raise
        dropped.append(part.name)
        log.info("dropped prediction log partition %s", part.name)
    return dropped


def _mark_pruned(conn: Connection, before: datetime) -> None:
    conn.exec_driver_sql(
        "INSERT INTO predq_log_state (id, pruned_before) VALUES (1, %s) ON CONFLICT (id) DO "
        "UPDATE SET pruned_before = GREATEST(predq_log_state.pruned_before, "
        "EXCLUDED.pruned_before), updated_at = CURRENT_TIMESTAMP", (before,))
