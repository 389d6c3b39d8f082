"""Micro-batching of single-row predict tasks inside one worker process.

Task threads (Celery's threads pool) hand their row to the model's batcher and wait. The
batcher thread takes whatever is queued right now, up to `max_batch_size`, predicts it in
ONE model call, logs it with ONE bulk write, and only then releases the waiting tasks, so
each task is acknowledged after its row is durable. A lone request is never held back:
there is no wait for company (Triton's zero-delay default); rows that arrive while a
batch runs form the next one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from workers import metrics
from workers.execute import ServingModel, execute, persist
from workers.validation import Limits
from workers.writer import PredictionWriter

log = logging.getLogger(__name__)

LINGER_S = 0.002
"""How long a batch waits for company, only while the previous batch had some."""


@dataclass
class _Item:
    features: object
    request_id: str
    future: Future[dict[str, Any]]


class Batcher:
    """One per (process, model name)."""

    def __init__(self, name: str, model: Callable[[], ServingModel], writer: PredictionWriter,
                 limits: Limits, max_batch_size: int,
                 before_batch: Callable[[], None] | None = None) -> None:
        self.name = name
        self._model = model
        self._writer = writer
        self._limits = limits
        self._max = max_batch_size
        self._before_batch = before_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"predq-batcher-{name}",
                                        daemon=True)
        self._thread.start()
        self.batches = 0
        self.rows = 0
        self._last_size = 0

    def submit(self, features: object, request_id: str) -> Future[dict[str, Any]]:
        future: Future[dict[str, Any]] = Future()
        self._queue.put(_Item(features, request_id, future))
        return future

    def close(self) -> None:
        """Finish what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _take(self) -> tuple[list[_Item], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        items = [first]
        # Under load (the last batch had company) linger briefly for more rows: every
        # batch pays a fixed model-call and transaction cost. A lone request never waits.
        deadline = time.monotonic() + (LINGER_S if self._last_size > 1 else 0.0)
        while len(items) < self._max:
            try:
                timeout = deadline - time.monotonic()
                nxt = (self._queue.get(timeout=timeout) if timeout > 0
                       else self._queue.get_nowait())
            except queue.Empty:
                break
            if nxt is None:
                return items, True
            items.append(nxt)
        self._last_size = len(items)
        return items, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items, stopping = self._take()
            if items:
                self._process(items)

    def _process(self, items: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            if self._before_batch is not None:
                self._before_batch()
            model = self._model()
            outcome = execute(model, [i.features for i in items], [i.request_id for i in items],
                              self._limits, single_rows=True)
            persist(outcome, self._writer.write)
        except Exception as exc:
            log.exception("batch of %d rows for model %r failed", len(items), self.name)
            metrics.observe_batch(self.name, None, len(items), len(items),
                                  time.perf_counter() - started)
            for item in items:
                item.future.set_exception(exc)
            return
        metrics.observe_results(self.name, model.version, outcome.results,
                                time.perf_counter() - started)
        self.batches += 1
        self.rows += len(items)
        for item, result in zip(items, outcome.results, strict=True):
            if "error" not in result:
                result["model_version"] = model.version
                result["model_sha256"] = model.sha256
            item.future.set_result(result)
