"""A short-lived memory of model names a process could not serve (negative cache).

A typo'd name must cost neither a loader nor a database query per request: its answer is
remembered for `ttl_s`, after which one lookup checks again (the name may have been
registered since). Bounded: the oldest entries go first.
"""

from __future__ import annotations

import threading
import time

from modelstore import defaults
from workers import metrics


class UnknownNames:
    """Thread-safe; one per serving process."""

    def __init__(self, ttl_s: float = defaults.UNKNOWN_MODEL_TTL_S,
                 max_names: int = defaults.MAX_UNKNOWN_MODEL_NAMES) -> None:
        self.ttl_s = ttl_s
        self.max_names = max_names
        self._answers: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> str | None:
        """The remembered error for `name`, while it is fresh."""
        with self._lock:
            entry = self._answers.get(name)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._answers[name]
                metrics.set_unknown_names(len(self._answers))
                return None
            return entry[1]

    def remember(self, name: str, error: str) -> None:
        with self._lock:
            self._answers.pop(name, None)
            while len(self._answers) >= self.max_names:
                self._answers.pop(next(iter(self._answers)))
            self._answers[name] = (time.monotonic() + self.ttl_s, error)
            metrics.set_unknown_names(len(self._answers))

    def forget(self, name: str | None = None) -> None:
        """Drop one name's answer, or all (a promote or reload may have made it servable)."""
        with self._lock:
            if name is None:
                self._answers.clear()
            else:
                self._answers.pop(name, None)
            metrics.set_unknown_names(len(self._answers))

    def __len__(self) -> int:
        return len(self._answers)
