"""Dead letters: spooled prediction rows the database refuses for good.

A replayed row the store refuses (a value it cannot hold, a constraint) would block every
replay behind it and keep the worker spooling forever. It is moved here instead, one JSON
line per row with the reason, fsynced, so nothing accepted is silently lost: an operator
can read, fix and re-insert it. Bounded: when the file reaches its cap, replay stops with
a clear error rather than dropping rows.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelstore import defaults
from modelstore.errors import ReplayBlocked
from workers import metrics

log = logging.getLogger(__name__)

FILE_NAME = "dead-letter.jsonl"


class DeadLetters:
    """Thread-safe; one per spool directory and process (appends are whole lines)."""

    def __init__(self, directory: Path,
                 max_bytes: int = defaults.MAX_DEAD_LETTER_BYTES) -> None:
        self.path = Path(directory) / FILE_NAME
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.rows = self._count()

    def _count(self) -> int:
        try:
            with self.path.open("rb") as fh:
                return sum(1 for _ in fh)
        except FileNotFoundError:
            return 0

    def add(self, row: Mapping[str, Any], reason: str) -> None:
        """Append one refused row with its reason, durably (fsync)."""
        line = json.dumps({"reason": reason, "at": datetime.now(UTC).isoformat(),
                           "row": row}, default=str, ensure_ascii=True) + "\n"
        data = line.encode()
        with self._lock:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size + len(data) > self.max_bytes:
                raise ReplayBlocked(f"dead-letter file {self.path} is at its cap of "
                                     f"{self.max_bytes} bytes")
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                         0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.rows += 1
        metrics.observe_dead_letter()
        log.error("spooled prediction row %r refused by the database, moved to %s: %s",
                  row.get("request_id"), self.path, reason)
