"""The prediction writer: bulk insert into Postgres, or the durable spool when it is down.

A batch counts as durable when either its rows are committed or they are fsynced in the
spool; only then are the tasks that carried them acknowledged (invariant 3). Once a write
finds the database unavailable, writes go straight to the spool and only the replayer
thread probes the database, so an outage never stalls serving (invariant 4). A write
that hangs on a silent link is cut off by the watchdog after WRITE_DEADLINE_S.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg2
from sqlalchemy import exc as sa_exc

from modelstore import defaults
from modelstore.db import ModelEvaluationDB
from modelstore.errors import (
    DatabaseUnavailable,
    InvalidInput,
    ReplayBlocked,
    SchemaError,
    StoreError,
)
from modelstore.predictions import PredictionRow, check_rows
from workers import metrics
from workers.deadletter import DeadLetters
from workers.spool import Spool

log = logging.getLogger(__name__)

REPLAY_INTERVAL_S = 1.0
WRITE_DEADLINE_S = 10.0
WATCHDOG_TICK_S = 0.5
BLOCKED_RETRY_S = 60.0
"""A stopped replay (schema mismatch, full dead-letter file) looks again this often, quietly."""

WRITTEN = "written"
SPOOLED = "spooled"


_ROW_FAULTS = (psycopg2.DataError, psycopg2.IntegrityError, sa_exc.DataError,
               sa_exc.IntegrityError)
# A missing table or column: the database's schema is not the one this predq writes.
_SCHEMA_FAULTS = (psycopg2.ProgrammingError, sa_exc.ProgrammingError)


def refused_row(exc: BaseException) -> bool:
    """True when the store refused the rows themselves (a value it cannot hold, a
    constraint), not when it is unreachable, mis-migrated or failing on its own."""
    if isinstance(exc, InvalidInput):
        return True
    if isinstance(exc, DatabaseUnavailable | SchemaError):
        return False
    return _caused_by(exc, _ROW_FAULTS)


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, kinds):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


class PredictionWriter:
    """Thread-safe; one per serving process."""

    def __init__(self, db_factory: Any, spool: Spool,
                 write_deadline_s: float = WRITE_DEADLINE_S) -> None:
        self._db_factory = db_factory
        self._db: ModelEvaluationDB | None = None
        self.spool = spool
        self.dead_letters = DeadLetters(spool.directory)
        self.write_deadline_s = write_deadline_s
        self.replay_error: str | None = None  # why replay is stopped, until it resumes
        self._retry_at = 0.0
        self._dead_ids: set[str] = set()  # dead-lettered since the last complete replay
        self._down = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._replayer = threading.Thread(target=self._replay_loop, name="predq-spool-replay",
                                          daemon=True)
        self._watchdog = threading.Thread(target=self._watchdog_loop,
                                          name="predq-write-watchdog", daemon=True)

    @property
    def down(self) -> bool:
        """True while writes go straight to the spool (the database was unreachable)."""
        return self._down

    def start(self) -> None:
        self._replayer.start()
        self._watchdog.start()

    def write(self, rows: Sequence[PredictionRow]) -> str:
        """Make rows durable; returns WRITTEN or SPOOLED. Raises only if both paths fail."""
        if not rows:
            return WRITTEN
        if not self._down:
            try:
                self._database().store_predictions(rows)
                metrics.observe_write(rows, spooled=False)
                return WRITTEN
            except DatabaseUnavailable as exc:
                # Only an outage is spooled: a row the database refuses for good would
                # block every later replay behind it, so that error goes to the caller.
                # From now on writes go straight to the spool; the replayer probes.
                self._down = True
                log.warning("prediction log unavailable, spooling until it is back: %s", exc)
        # Refuse here what the database would refuse at replay (InvalidInput names the
        # row; the batcher then isolates it): the spool holds only storable rows.
        check_rows(rows)
        self.spool.append(rows)
        metrics.observe_write(rows, spooled=True)
        metrics.set_spool_depth(self.spool.pending_rows())
        return SPOOLED

    def _watchdog_loop(self) -> None:
        """A silent partition (or a proxy that stops forwarding) leaves a socket that TCP
        never declares dead: without this deadline a batch, and every task waiting on it,
        would hang until the link heals. A cut-off write raises DatabaseUnavailable in
        its own thread, which spools the rows."""
        while not self._stop.wait(WATCHDOG_TICK_S):
            db = self._db
            if db is None:
                continue
            try:
                db.abort_stalled_writes(self.write_deadline_s)
            except Exception:
                log.exception("write watchdog failed; will retry")

    def _database(self) -> ModelEvaluationDB:
        with self._lock:
            if self._db is None:
                self._db = self._db_factory()
            return self._db

    def replay_once(self) -> int:
        """Write spooled rows to the database; returns rows replayed (0 while it is down).

        Runs on the replayer thread, so a dead database costs this thread a connect
        timeout per attempt, never the serving path. Outages are retried; a row the
        store refuses goes to the dead-letter file; a schema mismatch (or a full
        dead-letter file) stops replay with one clear error until it is fixed.
        """
        pending = self.spool.pending_rows()
        if pending == 0 and not self._down:
            return 0
        if self.replay_error is not None and time.monotonic() < self._retry_at:
            return 0
        try:
            db = self._database()
            replayed = self.spool.replay(self._replay_write) if pending else 0
            if not pending:
                db.ping()
        except DatabaseUnavailable as exc:
            log.info("database still unavailable; %d rows stay spooled: %s", pending, exc)
            return 0
        except (SchemaError, ReplayBlocked) as exc:
            self._stop_replay(pending, exc)
            return 0
        except StoreError as exc:  # not the rows' fault: the server, or its schema
            if _caused_by(exc, _SCHEMA_FAULTS):
                self._stop_replay(pending, exc)
                return 0
            log.warning("spool replay failed, will retry; %d rows stay spooled: %s",
                        pending, exc)
            return 0
        self._resume_replay()
        if replayed:
            log.info("replayed %d spooled prediction rows into the database", replayed)
            metrics.observe_replay(replayed)
        return replayed

    def _replay_write(self, rows: list[dict[str, Any]]) -> None:
        """One spooled chunk, with a deadline that grows with its size (a slow server is
        not a silent link). If the store refuses a row, the chunk is written row by row
        and each refused row goes to the dead-letter file; anything else propagates."""
        deadline = self.write_deadline_s + len(rows) * defaults.REPLAY_DEADLINE_PER_ROW_S
        db = self._database()
        try:
            db.store_predictions(rows, deadline_s=deadline)
            return
        except (InvalidInput, StoreError) as exc:
            if not refused_row(exc):
                raise
        for row in rows:
            try:
                db.store_predictions([row], deadline_s=self.write_deadline_s)
            except (InvalidInput, StoreError) as exc:
                if not refused_row(exc):
                    raise
                self._dead_letter(row, exc)

    def _dead_letter(self, row: Mapping[str, Any], exc: Exception) -> None:
        rid = str(row.get("request_id"))
        if rid in self._dead_ids:  # a segment replayed again after a later chunk failed
            return
        self.dead_letters.add(row, f"{type(exc).__name__}: {exc}")
        self._dead_ids.add(rid)

    def _stop_replay(self, pending: int, exc: Exception) -> None:
        self._retry_at = time.monotonic() + BLOCKED_RETRY_S
        if self.replay_error is None:
            log.error("spool replay STOPPED, %d rows stay spooled until this is fixed: %s",
                      pending, exc)
        self.replay_error = str(exc)
        metrics.set_replay_blocked(True)

    def _resume_replay(self) -> None:
        if self.replay_error is not None:
            log.warning("spool replay resumed")
            self.replay_error = None
            metrics.set_replay_blocked(False)
        self._dead_ids.clear()
        if self._down:
            log.warning("prediction log available again")
            self._down = False

    def _replay_loop(self) -> None:
        while not self._stop.wait(REPLAY_INTERVAL_S):
            try:
                self.replay_once()
                metrics.set_spool_depth(self.spool.pending_rows())
            except Exception:
                log.exception("spool replay failed; will retry")

    def close(self) -> None:
        self._stop.set()
        for thread in (self._replayer, self._watchdog):
            if thread.is_alive():
                thread.join(timeout=5)
        try:
            self.replay_once()
        except Exception:
            log.exception("final spool replay failed; rows stay spooled for the next start")
        self.spool.close()
