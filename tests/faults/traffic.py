"""Prediction traffic for fault tests: bursts of single-row and batch tasks by name, with
every result and the time it arrived recorded."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from tests.support import models

_FEATURES = models.rows(200, seed=11)


@dataclass
class Tally:
    """What one phase of traffic got back."""

    ok: dict[str, str] = field(default_factory=dict)  # request_id -> model_version
    errors: dict[str, str] = field(default_factory=dict)  # request_id -> error
    arrivals: list[float] = field(default_factory=list)  # monotonic time per result
    bursts: int = 0

    @property
    def served(self) -> int:
        return len(self.ok)

    def merge(self, other: Tally) -> None:
        self.ok.update(other.ok)
        self.errors.update(other.errors)
        self.arrivals += other.arrivals
        self.bursts += other.bursts


class Traffic:
    """Sends bursts of `singles` predq.predict tasks plus one predq.predict_batch task."""

    def __init__(self, app: Any, singles: int = 10, batch_rows: int = 30) -> None:
        self.app = app
        self.singles = singles
        self.batch_rows = batch_rows
        self._n = itertools.count()

    def _row(self, i: int) -> dict[str, object]:
        return _FEATURES[i % len(_FEATURES)]

    def burst(self, prefix: str, timeout: float = 60.0) -> Tally:
        tally = Tally(bursts=1)
        pending = []
        for _ in range(self.singles):
            i = next(self._n)
            rid = f"{prefix}-s{i}"
            pending.append(([rid], self.app.send_task(
                "predq.predict", kwargs={"features": self._row(i), "request_id": rid})))
        idx = [next(self._n) for _ in range(self.batch_rows)]
        ids = [f"{prefix}-b{i}" for i in idx]
        pending.append((ids, self.app.send_task("predq.predict_batch", kwargs={
            "rows": [self._row(i) for i in idx], "request_ids": ids})))
        for rids, result in pending:
            value = result.get(timeout=timeout)
            arrived = time.monotonic()
            items = value.get("results", []) if "results" in value else [value]
            version = value.get("model_version")
            if "results" in value and value.get("error"):
                tally.errors.update({rid: value["error"] for rid in rids})
            for item in items:
                rid = item.get("request_id")
                if "error" in item:
                    tally.errors[rid] = item["error"]
                else:
                    tally.ok[rid] = item.get("model_version") or version
                tally.arrivals.append(arrived)
        return tally

    def run(self, prefix: str, seconds: float, pause: float = 0.05) -> Tally:
        """Bursts back to back (with a short pause) for `seconds`."""
        tally = Tally()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            tally.merge(self.burst(prefix))
            time.sleep(pause)
        return tally
