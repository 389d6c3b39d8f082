"""The prediction log's Postgres writes, on driver connections kept open for them.

Why not the SQLAlchemy pool: a one-row write through it paid a checkout, the autocommit
switch and the reset on return, about a third of the write's client CPU (py-spy on a
worker; see bench/README.md). These connections are opened through the engine, so they
carry its connect arguments (connect timeout, keepalives, statement_timeout), and are then
kept outside its pool, one per concurrent writer.

Why `abort_stalled`: a link that goes silent (no reset, no refusal) leaves a write blocked
on a socket that TCP never declares dead. Shutting that socket down makes the blocked call
fail at once, so the caller can keep the rows elsewhere (the worker's spool).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from modelstore.defaults import COPY_THRESHOLD_ROWS, LOOSE_DEDUP_WINDOW_S

log = logging.getLogger(__name__)

KEEP_IDLE = 4
"""Idle log connections kept per process; more are opened while more writes overlap."""
RECYCLE_S = 1800.0
"""A log connection older than this is closed at its next checkout (as the engine's
pool_recycle), before a server or proxy idle timeout can turn it into a failed write."""

COLUMNS = ("request_id", "model_name", "model_version", "model_sha256", "input_features",
           "predicted_value", "confidence_score", "actual_value", "role", "prediction_time")
"""The logged columns, in tuple order; a tuple carries one more item, `loose` (see below)."""
_COLS = ", ".join(COLUMNS)
_CONFLICT = "ON CONFLICT (request_id, model_version, prediction_time) DO NOTHING"
_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS predq_prediction_stage (
    request_id VARCHAR(128), model_name VARCHAR(100), model_version VARCHAR(50),
    model_sha256 VARCHAR(64), input_features JSONB, predicted_value FLOAT8,
    confidence_score FLOAT8, actual_value FLOAT8, role VARCHAR(16),
    prediction_time TIMESTAMP, loose BOOLEAN
) ON COMMIT DELETE ROWS
"""
# A loose row's time was chosen by whoever logged it (a raw client sent no request_time),
# so a redelivery carries another time, maybe in the next partition: the unique index
# cannot see it. It is skipped when its (request_id, version) is logged within
# LOOSE_DEDUP_WINDOW_S of it, a probe of the dedup index in the partitions that range spans.
_DEDUP_SELECT = f"""
SELECT DISTINCT ON (s.request_id, s.model_version) {", ".join("s." + c for c in COLUMNS)}
FROM {{source}} AS s{{names}}
WHERE NOT (s.loose AND EXISTS (
    SELECT 1 FROM model_predictions AS p
    WHERE p.request_id = s.request_id AND p.model_version = s.model_version
      AND p.prediction_time >= s.prediction_time - make_interval(secs => {{window}})
      AND p.prediction_time <= s.prediction_time + make_interval(secs => {{window}})))
ORDER BY s.request_id, s.model_version, s.prediction_time
"""
_STAGE_INSERT = (f"INSERT INTO model_predictions ({_COLS}) "
                 f"{_DEDUP_SELECT.format(source='predq_prediction_stage', names='', window='%s')} "
                 f"{_CONFLICT}")
_VALUES_INSERT = f"INSERT INTO model_predictions ({_COLS}) VALUES %s {_CONFLICT}"
_VALUES_TEMPLATE = "(%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s)"
_LOOSE_VALUES_INSERT = (
    f"INSERT INTO model_predictions ({_COLS}) "
    + _DEDUP_SELECT.format(source="(VALUES %s)", names=f"({_COLS}, loose)",
                           window="{window}")
    + f" {_CONFLICT}")
_LOOSE_VALUES_TEMPLATE = ("(%s, %s, %s, %s, %s::jsonb, %s::float8, %s::float8, %s::float8, "
                          "%s::varchar, %s::timestamp, %s::boolean)")


def write_tuples(dbapi_conn: Any, tuples: list[tuple[Any, ...]], info: dict[str, Any],
                 window_s: int = LOOSE_DEDUP_WINDOW_S) -> int:
    """Insert checked row tuples (COLUMNS order, then `loose`) in the connection's current
    transaction, skipping rows already logged; returns how many were new. `info` is per
    connection."""
    loose = any(t[-1] for t in tuples)
    if len(tuples) >= COPY_THRESHOLD_ROWS:
        if not loose and _direct_copy(dbapi_conn, tuples):
            return len(tuples)
        return _copy_insert(dbapi_conn, tuples, info, window_s)
    if loose:
        return _loose_values_insert(dbapi_conn, tuples, window_s)
    return _values_insert(dbapi_conn, tuples)


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NULL = "\\N"


def _field(value: Any) -> str:
    """One value in COPY's text format."""
    if value is None:
        return _NULL
    if type(value) is float:
        return repr(value)
    return str(value).translate(_ESCAPES)


def _copy_text(tuples: Iterable[tuple[Any, ...]]) -> io.StringIO:
    """Rows in COPY's text format (tab-separated, \\N for NULL).

    Why not CSV: every JSON document is full of double quotes, which CSV must double;
    csv.writer took 4.4 ms per 1,000 rows, this takes about a third of that. A line is
    built plainly and rebuilt field by field only if a value held a character that text
    format escapes (backslash, tab, newline, carriage return).
    """
    lines = []
    for t in tuples:
        line = "\t".join([_NULL if v is None else (repr(v) if type(v) is float else str(v))
                          for v in t])
        # Backslashes here are the NULL markers, unless a value brought its own.
        if (line.count("\\") != t.count(None) or "\n" in line or "\r" in line
                or line.count("\t") != len(t) - 1):
            line = "\t".join(map(_field, t))
        lines.append(line)
    lines.append("")
    return io.StringIO("\n".join(lines))


def _direct_copy(dbapi_conn: Any, tuples: list[tuple[Any, ...]]) -> bool:
    """COPY straight into the log: the common case, where no row is logged yet.

    Runs in a savepoint; on a unique violation (a redelivered or replayed row) it rolls
    back and returns False, and the caller takes the staged ON CONFLICT path.
    """
    from psycopg2 import errors as pg_errors

    buffer = _copy_text(t[:-1] for t in tuples)
    with dbapi_conn.cursor() as cur:
        cur.execute("SAVEPOINT predq_direct_copy")
        try:
            cur.copy_expert(f"COPY model_predictions ({_COLS}) FROM STDIN", buffer)
        except pg_errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT predq_direct_copy")
            return False
        cur.execute("RELEASE SAVEPOINT predq_direct_copy")
    return True


def _copy_insert(dbapi_conn: Any, tuples: list[tuple[Any, ...]], info: dict[str, Any],
                 window_s: int) -> int:
    buffer = _copy_text(tuples)
    with dbapi_conn.cursor() as cur:
        if not info.get("predq_stage"):
            cur.execute(_STAGE_DDL)
            info["predq_stage"] = True
        cur.copy_expert(f"COPY predq_prediction_stage ({_COLS}, loose) FROM STDIN", buffer)
        cur.execute(_STAGE_INSERT, (int(window_s), int(window_s)))
        inserted = int(cur.rowcount)
        # Emptied here, not only at commit: two calls in one transaction must not mix.
        cur.execute("DELETE FROM predq_prediction_stage")
    return inserted


def _values_insert(dbapi_conn: Any, tuples: list[tuple[Any, ...]]) -> int:
    from psycopg2.extras import execute_values

    with dbapi_conn.cursor() as cur:
        execute_values(cur, _VALUES_INSERT, [t[:-1] for t in tuples],
                       template=_VALUES_TEMPLATE, page_size=len(tuples))
        return int(cur.rowcount)


def _loose_values_insert(dbapi_conn: Any, tuples: list[tuple[Any, ...]], window_s: int) -> int:
    from psycopg2.extras import execute_values

    sql = _LOOSE_VALUES_INSERT.replace("{window}", str(int(window_s)))
    with dbapi_conn.cursor() as cur:
        execute_values(cur, sql, tuples, template=_LOOSE_VALUES_TEMPLATE,
                       page_size=len(tuples))
        return int(cur.rowcount)


@dataclass(eq=False)
class _LogConnection:
    dbapi: Any
    info: dict[str, Any] = field(default_factory=dict)
    opened: float = field(default_factory=time.monotonic)
    started: float = 0.0
    limit_s: float | None = None  # this write's own deadline (a long replay chunk)
    aborted: bool = False


class LogConnections:
    """Driver connections reserved for prediction-log writes; thread-safe, one per
    (process, database). A connection that failed is closed, never reused."""

    def __init__(self, engine: Engine, keep_idle: int = KEEP_IDLE) -> None:
        self._engine = engine
        self._keep = keep_idle
        self._idle: list[_LogConnection] = []
        self._busy: set[_LogConnection] = set()
        self._lock = threading.Lock()

    def write(self, tuples: list[tuple[Any, ...]], limit_s: float | None = None) -> int:
        """One atomic write: a single autocommit INSERT below the COPY threshold, else a
        transaction (COPY, or the staged ON CONFLICT path). Driver errors propagate.
        `limit_s` replaces abort_stalled's limit for this write."""
        with self._connection() as conn:
            conn.limit_s = limit_s
            small = len(tuples) < COPY_THRESHOLD_ROWS
            conn.dbapi.autocommit = small  # psycopg2: a client-side switch, no round trip
            inserted = write_tuples(conn.dbapi, tuples, conn.info)
            if not small:
                conn.dbapi.commit()
            return inserted

    @contextmanager
    def _connection(self) -> Iterator[_LogConnection]:
        conn = self._checkout()
        try:
            yield conn
        except BaseException as exc:
            self._checkin(conn, False)
            if _lost(exc):  # a restarted server: the idle ones are dead too
                self.close()
            raise
        self._checkin(conn, True)

    def _checkout(self) -> _LogConnection:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None and time.monotonic() - conn.opened > RECYCLE_S:
            _close_quietly(conn.dbapi)
            conn = None
        if conn is None:
            fairy = self._engine.raw_connection()
            fairy.detach()  # ours from now on: closed by us, never returned to the pool
            conn = _LogConnection(fairy.dbapi_connection)
        with self._lock:
            conn.started = time.monotonic()
            self._busy.add(conn)
        return conn

    def _checkin(self, conn: _LogConnection, ok: bool) -> None:
        with self._lock:
            self._busy.discard(conn)
            keep = ok and not conn.aborted and len(self._idle) < self._keep
            if keep:
                self._idle.append(conn)
        if not keep:
            _close_quietly(conn.dbapi)

    def abort_stalled(self, limit_s: float) -> int:
        """Shut down the socket of every write running longer than `limit_s`, so it fails
        now instead of waiting on a silent link; returns how many were cut off."""
        now = time.monotonic()
        cut = 0
        with self._lock:  # under the lock: a finished write's connection is never touched
            for conn in self._busy:
                if conn.aborted or now - conn.started < (conn.limit_s or limit_s):
                    continue
                conn.aborted = True
                cut += 1
                log.warning("prediction log write stalled for %.1f s; cutting its connection",
                            now - conn.started)
                _shutdown_socket(conn.dbapi)
        return cut

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn.dbapi)


def _lost(exc: BaseException) -> bool:
    import psycopg2

    return isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError)


def _shutdown_socket(dbapi_conn: Any) -> None:
    # On a duplicate of the fd: shutdown() acts on the socket both share, and closing the
    # duplicate leaves libpq's own descriptor valid until psycopg2 closes the connection.
    try:
        with socket.socket(fileno=os.dup(dbapi_conn.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("could not cut off a stalled log connection: %s", exc)


def _close_quietly(dbapi_conn: Any) -> None:
    with suppress(Exception):
        dbapi_conn.close()


_lock = threading.Lock()
_registry: dict[tuple[int, str], LogConnections] = {}
_orphans: list[LogConnections] = []


def log_connections(engine: Engine) -> LogConnections:
    """This process's log connections for `engine`'s database, created on first use."""
    key = (os.getpid(), str(engine.url))
    with _lock:
        found = _registry.get(key)
        if found is None:
            found = _registry[key] = LogConnections(engine)
        return found


def close_all() -> None:
    """Close this process's log connections (worker shutdown, tests)."""
    with _lock:
        mine = [c for (pid, _), c in _registry.items() if pid == os.getpid()]
        _registry.clear()
    for conns in mine:
        conns.close()


def forget_after_fork() -> None:
    """In a forked child: drop the parent's connections without closing them (closing
    would end the parent's sessions); kept referenced so garbage collection never does."""
    _orphans.extend(_registry.values())
    _registry.clear()
