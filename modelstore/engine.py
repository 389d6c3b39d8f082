"""One SQLAlchemy engine per database URL per process, created on first use.

Engines are never created at import and never cross a fork: a child process that
inherits the registry drops the parent's engines (without closing the parent's sockets)
and builds its own on first use.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
from sqlalchemy import Connection, Engine, create_engine, event, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError

from modelstore import defaults, pglog, schema
from modelstore.errors import DatabaseUnavailable, SchemaError, StoreError

log = logging.getLogger(__name__)

_lock = threading.Lock()
_engines: dict[tuple[int, str], Engine] = {}
_ready: set[tuple[int, str]] = set()

UPGRADE_COMMAND = "predq db upgrade"
SCHEMA_LOCK_KEY = 7301995
"""Advisory lock held while creating or upgrading the schema (Postgres)."""


def redact_url(url: str) -> str:
    """The URL with its password masked, safe for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - any unparsable URL is shown as a placeholder
        return "<unparsable url>"


def _forget_after_fork() -> None:
    # The child must not reuse the parent's pooled sockets; close=False leaves them to the parent.
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()
    _ready.clear()
    pglog.forget_after_fork()


os.register_at_fork(after_in_child=_forget_after_fork)


def _build(url: str, connect_timeout_s: int) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    connect_args: dict[str, Any] = {
        "connect_timeout": connect_timeout_s,
        "application_name": "predq",
        # A silent partition (no reset) must surface as an error in seconds, not minutes:
        # unacknowledged sends give up after tcp_user_timeout, a silent peer after
        # keepalives_idle + interval * count.
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": connect_timeout_s * 1000,
        "options": f"-c statement_timeout={defaults.STATEMENT_TIMEOUT_MS}",
    }
    if parsed.drivername in ("postgresql", "postgres"):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; predq ships psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return create_engine(
        # No pre-ping: it costs a round trip per checkout (40% of a small write's overhead).
        # A connection that died with the server fails once, SQLAlchemy invalidates the
        # pool, and callers see DatabaseUnavailable (workers spool and retry).
        parsed, connect_args=connect_args, pool_pre_ping=False, pool_recycle=1800,
        pool_size=5, max_overflow=10
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # pysqlite would BEGIN only before the first write, after our reads: a promote that
    # read generation N could then commit N+1 twice. _sqlite_begin takes over.
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front, so read-then-write transactions serialize
    # (waiting up to the busy timeout) instead of racing or failing with SQLITE_BUSY.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def get_engine(url: str, connect_timeout_s: int = defaults.CONNECT_TIMEOUT_S, *,
               check_schema: bool = True) -> Engine:
    """The process's engine for `url`, with the schema checked (and created if empty).

    `check_schema=False` is for the migrator, which must open a database it would refuse.
    """
    key = (os.getpid(), url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _build(url, connect_timeout_s)
        if check_schema and key not in _ready:
            with translate_errors("checking the schema", url=redact_url(url)):
                ensure_schema(engine)
            _ready.add(key)
    return engine


def dispose_engines() -> None:
    """Close every engine of this process (worker shutdown, tests)."""
    pglog.close_all()
    with _lock:
        for (pid, _url), engine in list(_engines.items()):
            if pid == os.getpid():
                engine.dispose()
        _engines.clear()
        _ready.clear()


def ensure_schema(engine: Engine) -> None:
    """Create the schema on an empty database; refuse an older or foreign one."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Two processes starting on an empty database must not both create tables.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        existing = set(inspect(conn).get_table_names())
        if schema.schema_info.name in existing:
            _check_version(conn, engine)
            return
        overlap = existing & set(schema.PREDQ_TABLES)
        if overlap:
            raise SchemaError(
                f"database {redact_url(str(engine.url))} has tables {sorted(overlap)} from an "
                f"older schema (no predq_schema table); run `{UPGRADE_COMMAND}` to migrate it"
            )
        schema.create_all(conn)
        conn.execute(schema.schema_info.insert().values(version=defaults.SCHEMA_VERSION))
        log.info("created predq schema v%d in %s", defaults.SCHEMA_VERSION,
                 redact_url(str(engine.url)))


def _check_version(conn: Connection, engine: Engine) -> None:
    found = conn.execute(select(schema.schema_info.c.version).order_by(
        schema.schema_info.c.id.desc()).limit(1)).scalar()
    if found != defaults.SCHEMA_VERSION:
        raise SchemaError(
            f"database {redact_url(str(engine.url))} has predq schema version {found}, this "
            f"predq needs {defaults.SCHEMA_VERSION}; run `{UPGRADE_COMMAND}` to migrate it"
        )


@contextmanager
def translate_errors(action: str, **ids: object) -> Iterator[None]:
    """Turn SQLAlchemy/DBAPI errors into predq errors naming the action and identifiers.

    SQLAlchemy's IntegrityError is re-raised untouched so the caller can map it to a domain
    result. Raw psycopg2 errors (COPY and execute_values run on the driver's cursor) are
    translated like their SQLAlchemy wrappers.
    """
    where = ", ".join(f"{k}={v!r}" for k, v in ids.items())
    suffix = f" ({where})" if where else ""
    try:
        yield
    except IntegrityError:
        raise
    except OperationalError as exc:
        if _is_connection_error(exc):
            raise DatabaseUnavailable(
                f"database unavailable while {action}{suffix}: {_first_line(exc)}"
            ) from exc
        raise StoreError(f"database error while {action}{suffix}: {_first_line(exc)}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise DatabaseUnavailable(
                f"database connection lost while {action}{suffix}: {_first_line(exc)}"
            ) from exc
        raise StoreError(f"database error while {action}{suffix}: {_first_line(exc)}") from exc
    except SQLAlchemyError as exc:
        raise StoreError(f"database error while {action}{suffix}: {_first_line(exc)}") from exc
    except psycopg2.Error as exc:
        if isinstance(exc, psycopg2.InterfaceError) or _says_disconnected(exc):
            raise DatabaseUnavailable(
                f"database connection lost while {action}{suffix}: {_first_line(exc)}"
            ) from exc
        raise StoreError(f"database error while {action}{suffix}: {_first_line(exc)}") from exc


def _is_connection_error(exc: OperationalError) -> bool:
    return exc.connection_invalidated or _says_disconnected(exc.orig)


def _says_disconnected(exc: BaseException | None) -> bool:
    text = str(exc).lower()
    markers = ("could not connect", "connection refused", "timeout expired", "server closed",
               "terminating connection", "connection to server", "no route", "could not translate",
               "the database system is", "ssl", "unable to open database",
               "connection already closed")
    return any(m in text for m in markers)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]
