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
from collections.abc import Sequence
from typing import Any

from modelstore.db import ModelEvaluationDB
from modelstore.errors import DatabaseUnavailable, StoreError
from modelstore.predictions import PredictionRow, check_rows
from workers import metrics
from workers.spool import Spool

log = logging.getLogger(__name__)

REPLAY_INTERVAL_S = 1.0
WRITE_DEADLINE_S = 10.0
WATCHDOG_TICK_S = 0.5

WRITTEN = "written"
SPOOLED = "spooled"


class PredictionWriter:
    """Thread-safe; one per serving process."""

    def __init__(self, db_factory: Any, spool: Spool) -> None:
        self._db_factory = db_factory
        self._db: ModelEvaluationDB | None = None
        self.spool = spool
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
                db.abort_stalled_writes(WRITE_DEADLINE_S)
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
        timeout per attempt, never the serving path.
        """
        pending = self.spool.pending_rows()
        if pending == 0 and not self._down:
            return 0
        try:
            db = self._database()
            replayed = self.spool.replay(db.store_predictions) if pending else 0
            if not pending:
                db.ping()
        except (DatabaseUnavailable, StoreError) as exc:
            log.info("database still unavailable; %d rows stay spooled: %s", pending, exc)
            return 0
        if self._down:
            log.warning("prediction log available again")
            self._down = False
        if replayed:
            log.info("replayed %d spooled prediction rows into the database", replayed)
            metrics.observe_replay(replayed)
        return replayed

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
