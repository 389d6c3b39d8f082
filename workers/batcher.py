"""Micro-batching of single-row predict tasks inside one worker process (leader/follower).

Each task thread (Celery's threads pool) queues its row and waits. Two stages, each run by
one of the waiting task threads at a time:

- predict: the first thread to find no predict leader takes what is queued right now, up
  to `max_batch_size`, predicts it in ONE model call, and hands the stage to the oldest row
  that arrived meanwhile;
- write: the thread of a predicted batch that finds no write leader logs every predicted
  batch waiting at that moment in ONE bulk write (group commit), answers their rows, and
  hands the stage to the owner of a batch that was predicted during the write.

A task returns only after its row is durable, so it is acknowledged after that (invariant
3). The next batch is predicted while this one is written.

Why no batcher thread: at one row per batch (the common case under a Celery consumer that
delivers one message at a time) the hand-offs to a batcher thread, a commit thread and
back cost more CPU than the prediction. Here a lone request runs start to finish on its own
thread, and is never held back: no wait for company at low load (Triton's zero-delay
default); a short linger applies only while requests overlap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelstore import defaults
from modelstore.errors import InvalidInput, PredqError, ServingTimeout
from workers import metrics
from workers.execute import Outcome, ServingModel, execute, persist
from workers.validation import Limits
from workers.writer import PredictionWriter

log = logging.getLogger(__name__)

OVERLAP_DECAY = 0.9
LINGER_OVERLAP = 0.25
"""A predict leader lingers for company only while at least this share of recent arrivals
found another row in flight (an exponential average): sequential callers never wait."""

_WAIT, _PREDICT, _WRITE, _ANSWERED = range(4)


@dataclass(eq=False)
class _Item:
    features: object
    request_id: str
    request_time: object = None
    # Released whenever `role` changes for the waiting thread; a bare lock is the cheapest
    # wake-up CPython has (an Event is a Condition plus a lock).
    wake: threading.Lock = field(default_factory=threading.Lock)
    role: int = _WAIT
    result: dict[str, Any] | None = None
    error: BaseException | None = None
    abandoned: bool = False  # its thread gave up waiting: never hand it a stage

    def __post_init__(self) -> None:
        self.wake.acquire()

    def wake_as(self, role: int) -> None:
        """Set the role and wake the thread. Callers hold the batcher's lock, so a waiter
        that times out sees either no role change or the role together with its release."""
        self.role = role
        if self.wake.locked():
            self.wake.release()

    def take_role(self) -> int:
        """The role handed over, consuming its release (caller holds the batcher's lock)."""
        self.wake.acquire(blocking=False)
        return self.role

    def answer(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        if self.result is None:
            raise PredqError(f"request {self.request_id!r}: answered without a result")
        return self.result


@dataclass(eq=False)
class _Predicted:
    """A batch predicted by one model object, waiting for its rows to be durable."""

    owner: _Item
    items: list[_Item]
    outcome: Outcome
    model: ServingModel
    started: float


class Batcher:
    """One per (process, model name)."""

    def __init__(self, name: str, model: Callable[[], ServingModel], writer: PredictionWriter,
                 limits: Limits, max_batch_size: int, linger_s: float,
                 before_batch: Callable[[], None] | None = None,
                 durable_wait_s: float = defaults.DURABLE_WAIT_S) -> None:
        self.name = name
        self._model = model
        self._writer = writer
        self._limits = limits
        self._max = max_batch_size
        self._linger_s = linger_s
        self._before_batch = before_batch
        self._durable_wait_s = durable_wait_s
        self._lock = threading.Lock()
        self._pending: list[_Item] = []
        self._predicting = False  # invariant: rows pending => a predict leader exists
        self._predicted: list[_Predicted] = []
        self._writing = False  # invariant: batches predicted => a write leader exists
        self._in_flight = 0  # rows submitted and not yet answered
        self._overlap = 0.0  # recent share of arrivals that found another row in flight

    def predict(self, features: object, request_id: str, timeout: float,
                request_time: object = None) -> dict[str, Any]:
        """Predict and log one row; returns its result once the row is durable."""
        item = _Item(features, request_id, request_time)
        with self._lock:
            self._overlap = OVERLAP_DECAY * self._overlap + (
                (1 - OVERLAP_DECAY) if self._in_flight else 0.0)
            self._in_flight += 1
            self._pending.append(item)
            role = _WAIT if self._predicting else _PREDICT
            self._predicting = True
        if role == _WAIT:
            role = self._first_wait(item, timeout)
        while role != _ANSWERED:
            if role == _PREDICT:
                role = self._lead_predict(item)
            elif role == _WRITE:
                role = self._lead_write(item)
            else:
                role = self._pipeline_wait(item)
        return item.answer()

    def _first_wait(self, item: _Item, timeout: float) -> int:
        """Wait to be predicted; only a row still queued may give up."""
        if item.wake.acquire(timeout=timeout):
            with self._lock:
                return item.role
        with self._lock:
            if item.role == _WAIT and item in self._pending:
                self._pending.remove(item)
                self._in_flight -= 1
                raise ServingTimeout(f"request {item.request_id!r}: not predicted within "
                                     f"{timeout:.0f} s")
            return item.take_role()  # handed a role as the wait ran out: take it now

    def _pipeline_wait(self, item: _Item) -> int:
        """Wait for this row to be durable (or for the write stage). The write has its
        own deadline; this one only keeps a thread from waiting for good on a defect."""
        if item.wake.acquire(timeout=self._durable_wait_s):
            with self._lock:
                return item.role
        with self._lock:
            if item.role != _WAIT:
                return item.take_role()
            item.abandoned = True  # a write leader writes its batch instead of handing over
        raise ServingTimeout(f"request {item.request_id!r}: predicted but not durable within "
                             f"{self._durable_wait_s:.0f} s")

    # -- predict stage --------------------------------------------------------------------

    def _lead_predict(self, me: _Item) -> int:
        with self._lock:
            me.role = _WAIT  # consumed
        items = self._take()
        started = time.perf_counter()
        try:
            model, outcome = self._run_model(items)
        except Exception as exc:  # noqa: BLE001 - loop boundary; _fail logs the traceback
            self._hand_over_predict()
            self._fail(items, exc, started)
            return me.role
        self._hand_over_predict()
        with self._lock:
            self._predicted.append(_Predicted(me, items, outcome, model, started))
            if self._writing:
                return _WAIT
            self._writing = True
        return _WRITE

    def _take(self) -> list[_Item]:
        # Under load (requests overlap) linger briefly for company: every batch pays a
        # fixed model-call and write cost. A lone request never waits.
        if self._linger_s > 0 and self._overlap >= LINGER_OVERLAP:
            time.sleep(self._linger_s)
        with self._lock:
            items = self._pending[:self._max]
            del self._pending[:self._max]
        return items

    def _hand_over_predict(self) -> None:
        with self._lock:
            if not self._pending:
                self._predicting = False
                return
            self._pending[0].wake_as(_PREDICT)

    def _run_model(self, items: list[_Item]) -> tuple[ServingModel, Outcome]:
        if self._before_batch is not None:
            self._before_batch()
        model = self._model()
        return model, execute(model, [i.features for i in items],
                              [i.request_id for i in items], self._limits, single_rows=True,
                              request_times=[i.request_time for i in items])

    # -- write stage ----------------------------------------------------------------------

    def _lead_write(self, me: _Item) -> int:
        with self._lock:
            me.role = _WAIT  # consumed, as in _lead_predict
        while True:
            with self._lock:
                group = self._group()
            self._commit(group)
            with self._lock:
                if not self._predicted:
                    self._writing = False
                    return me.role
                nxt = self._predicted[0].owner
                if nxt is not me and not nxt.abandoned:
                    nxt.wake_as(_WRITE)
                    return me.role  # answered: this thread's batch was in its group
            # The next batch is this thread's own, or its owner gave up waiting: write it.

    def _group(self) -> list[_Predicted]:
        """The oldest predicted batches, up to max_batch_size rows (at least one batch);
        the caller's own batch is always the oldest."""
        rows = len(self._predicted[0].items)
        end = 1
        while end < len(self._predicted) and rows + len(self._predicted[end].items) <= self._max:
            rows += len(self._predicted[end].items)
            end += 1
        group = self._predicted[:end]
        del self._predicted[:end]
        return group

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
            item.result = result
        self._answered(predicted.items)

    def _fail(self, items: list[_Item], exc: Exception, started: float) -> None:
        log.error("batch of %d rows for model %r failed: %s", len(items), self.name, exc,
                  exc_info=exc)
        metrics.observe_batch(self.name, None, len(items), len(items),
                              time.perf_counter() - started)
        for item in items:
            item.error = exc
        self._answered(items)

    def _answered(self, items: list[_Item]) -> None:
        with self._lock:
            self._in_flight -= len(items)
            for item in items:
                item.wake_as(_ANSWERED)
