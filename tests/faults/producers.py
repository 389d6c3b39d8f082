"""Producer loops for the Redis restart test: every attempt's outcome and duration, and a
watchdog that tells a hang from a slow error."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from modelstore.errors import PredqError


@dataclass
class Attempt:
    request_id: str
    started: float
    seconds: float
    ok: bool
    error: str | None = None  # "ExceptionType: message"
    clear: bool = True  # a predq error naming the broker or the request


@dataclass
class ProducerLoop:
    """Calls `send(request_id)` in a thread until stopped; records every attempt."""

    name: str
    send: Callable[[str], object]
    pause: float = 0.005
    attempts: list[Attempt] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _current: float | None = None

    def start(self) -> ProducerLoop:
        self._thread = threading.Thread(target=self._run, name=f"producer-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            rid = f"{self.name}-{n}"
            n += 1
            started = self._current = time.monotonic()
            try:
                self.send(rid)
            except PredqError as exc:
                self.attempts.append(Attempt(rid, started, time.monotonic() - started, False,
                                             f"{type(exc).__name__}: {exc}", True))
            except Exception as exc:  # noqa: BLE001 - an unclear error is what we measure
                self.attempts.append(Attempt(rid, started, time.monotonic() - started, False,
                                             f"{type(exc).__name__}: {str(exc).strip()}", False))
            else:
                self.attempts.append(Attempt(rid, started, time.monotonic() - started, True))
            self._current = None
            time.sleep(self.pause)

    def stop(self, patience: float) -> float | None:
        """Stop; returns how long the attempt in progress had been running if it is still
        stuck after `patience` seconds (a hang), else None."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=patience)
        if self._thread.is_alive() and self._current is not None:
            return time.monotonic() - self._current
        return None

    def ok_ids(self, before: float | None = None) -> set[str]:
        return {a.request_id for a in self.attempts
                if a.ok and (before is None or a.started + a.seconds < before)}

    def failed(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.ok]

    def error_kinds(self) -> Counter[str]:
        return Counter((a.error or "").split(":", 1)[0] for a in self.failed())
