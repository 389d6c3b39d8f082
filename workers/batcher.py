"""Micro-batching of single-row predict tasks inside one worker process.

Task threads (Celery's threads pool) hand their row to the model's batcher and wait. The
batcher thread takes whatever is queued right now, up to `max_batch_size`, and predicts it
in ONE model call; a commit thread logs it with ONE bulk write (batches that finish while
a commit is in flight share the next one), and only then are the waiting tasks released,
so each task is acknowledged after its row is durable. A lone request is never held
back: there is no wait for company at low load (Triton's zero-delay default); rows that
arrive while a batch runs form the next one.
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

from modelstore.errors import InvalidInput
from workers import metrics
from workers.execute import Outcome, ServingModel, execute, persist
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


@dataclass
class _Predicted:
    """A batch predicted by one model object, waiting for its rows to be durable."""

    items: list[_Item]
    outcome: Outcome
    model: ServingModel
    started: float


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
        self._done: queue.SimpleQueue[_Predicted | None] = queue.SimpleQueue()
        self._last_size = 0
        self._thread = threading.Thread(target=self._run, name=f"predq-batcher-{name}",
                                        daemon=True)
        self._committer = threading.Thread(target=self._commit_loop,
                                           name=f"predq-commit-{name}", daemon=True)
        self._committer.start()
        self._thread.start()

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
                self._predict(items)
        self._done.put(None)
        self._committer.join(timeout=30)

    def _predict(self, items: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            if self._before_batch is not None:
                self._before_batch()
            model = self._model()
            outcome = execute(model, [i.features for i in items], [i.request_id for i in items],
                              self._limits, single_rows=True)
        except Exception as exc:  # noqa: BLE001 - loop boundary; _fail logs the traceback
            self._fail(items, exc, started)
            return
        self._done.put(_Predicted(items, outcome, model, started))

    def _commit_loop(self) -> None:
        """Log predicted batches; batches that finish during a commit share the next one
        (group commit), so a slow fsync never stalls prediction."""
        stopping = False
        while not stopping:
            first = self._done.get()
            if first is None:
                return
            group = [first]
            while sum(len(p.items) for p in group) < self._max:
                try:
                    nxt = self._done.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                group.append(nxt)
            self._commit(group)

    def _commit(self, group: list[_Predicted]) -> None:
        try:
            if len(group) == 1:
                persist(group[0].outcome, self._writer.write)
            else:
                try:
                    self._writer.write([row for p in group for row in p.outcome.rows])
                except InvalidInput:  # some row is refused: isolate it, batch by batch
                    for predicted in group:
                        persist(predicted.outcome, self._writer.write)
        except Exception as exc:  # noqa: BLE001 - loop boundary; _fail logs the traceback
            for predicted in group:
                self._fail(predicted.items, exc, predicted.started)
            return
        for predicted in group:
            self._resolve(predicted)

    def _resolve(self, predicted: _Predicted) -> None:
        model, outcome = predicted.model, predicted.outcome
        metrics.observe_results(self.name, model.version, outcome.results,
                                time.perf_counter() - predicted.started)
        for item, result in zip(predicted.items, outcome.results, strict=True):
            if "error" not in result:
                result["model_version"] = model.version
                result["model_sha256"] = model.sha256
            item.future.set_result(result)

    def _fail(self, items: list[_Item], exc: Exception, started: float) -> None:
        log.error("batch of %d rows for model %r failed: %s", len(items), self.name, exc,
                  exc_info=exc)
        metrics.observe_batch(self.name, None, len(items), len(items),
                              time.perf_counter() - started)
        for item in items:
            item.future.set_exception(exc)
