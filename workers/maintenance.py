"""A serving process's log maintenance thread: partitions created ahead, retention applied.

So no external cron is needed: every serving process checks once at start and then every
LOG_MAINTENANCE_INTERVAL_S; the work itself is serialized by an advisory lock and is a
no-op when another process already did it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from modelstore import defaults, partitions
from modelstore.db import ModelEvaluationDB
from modelstore.settings import Settings

log = logging.getLogger(__name__)


class LogMaintainer:
    def __init__(self, settings: Settings, db_factory: Callable[[], ModelEvaluationDB],
                 interval_s: float = defaults.LOG_MAINTENANCE_INTERVAL_S) -> None:
        self._settings = settings
        self._db_factory = db_factory
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="predq-log-maintenance",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run_once(self) -> tuple[list[str], list[str]]:
        """(partitions created, partitions dropped)."""
        s = self._settings
        engine = self._db_factory().engine
        created = partitions.ensure_ahead(engine, s.log_partition, s.log_partitions_ahead)
        dropped: list[str] = []
        if s.log_retention_days:
            dropped = partitions.prune(engine, partitions.parse_age(
                f"{s.log_retention_days}d"), s.log_partition)
        return created, dropped

    def _loop(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            wait = self._interval_s
            try:
                self.run_once()
            except Exception:
                log.exception("prediction log maintenance failed; will retry in %.0f s",
                              self._interval_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
