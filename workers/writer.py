"""The prediction writer: bulk insert into Postgres, or the durable spool when it is down.

A batch counts as durable when either its rows are committed or they are fsynced in the
spool; only then are the tasks that carried them acknowledged (invariant 3). While the
database is failing, writes go straight to the spool for a back-off period, so a dead
database costs one connect timeout per back-off, not one per batch (invariant 4).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from modelstore.db import ModelEvaluationDB
from modelstore.errors import DatabaseUnavailable, StoreError
from modelstore.predictions import PredictionRow
from workers import metrics
from workers.spool import Spool

log = logging.getLogger(__name__)

BACKOFF_S = 2.0
REPLAY_INTERVAL_S = 1.0

WRITTEN = "written"
SPOOLED = "spooled"


class PredictionWriter:
    """Thread-safe; one per serving process."""

    def __init__(self, db_factory: Any, spool: Spool) -> None:
        self._db_factory = db_factory
        self._db: ModelEvaluationDB | None = None
        self.spool = spool
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._replayer = threading.Thread(target=self._replay_loop, name="predq-spool-replay",
                                          daemon=True)
        self.rows_written = 0
        self.rows_spooled = 0

    def start(self) -> None:
        self._replayer.start()

    def write(self, rows: Sequence[PredictionRow]) -> str:
        """Make rows durable; returns WRITTEN or SPOOLED. Raises only if both paths fail."""
        if not rows:
            return WRITTEN
        if time.monotonic() >= self._down_until:
            try:
                self._database().store_predictions(rows)
                self.rows_written += len(rows)
                metrics.observe_write(rows, spooled=False)
                return WRITTEN
            except DatabaseUnavailable as exc:
                # Only an outage is spooled: a row the database refuses for good would
                # block every later replay behind it, so that error goes to the caller.
                self._down_until = time.monotonic() + BACKOFF_S
                log.warning("prediction log unavailable, spooling %d rows: %s", len(rows), exc)
        self.spool.append(rows)
        self.rows_spooled += len(rows)
        metrics.observe_write(rows, spooled=True)
        metrics.set_spool_depth(self.spool.pending_rows())
        return SPOOLED

    def _database(self) -> ModelEvaluationDB:
        with self._lock:
            if self._db is None:
                self._db = self._db_factory()
            return self._db

    def replay_once(self) -> int:
        """Write spooled rows to the database; returns rows replayed (0 when it is down)."""
        if self.spool.pending_rows() == 0 or time.monotonic() < self._down_until:
            return 0
        try:
            replayed = self.spool.replay(self._database().store_predictions)
        except (DatabaseUnavailable, StoreError) as exc:
            self._down_until = time.monotonic() + BACKOFF_S
            log.info("spool replay deferred: %s", exc)
            return 0
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
        if self._replayer.is_alive():
            self._replayer.join(timeout=5)
        try:
            self.replay_once()
        except Exception:
            log.exception("final spool replay failed; rows stay spooled for the next start")
        self.spool.close()
