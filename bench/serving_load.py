"""Load generation for the serving benchmark: one producer process sending as fast as it can,
with results stored (collect every result) or fire-and-forget (watch the broker drain),
plus sequential latency probes and a light background load for the promote trials."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from sqlalchemy import Engine, text

from producer.sample import FEATURES, make_cars

QUEUE = "predq"
UNACKED = "unacked"
INFLIGHT_REGISTRY = "predq:inflight-lists"  # workers.transport's per-consumer in-flight lists
RESULT_TIMEOUT_S = 120.0
POLL_S = 0.005


def feature_rows(n: int, seed: int) -> list[dict[str, Any]]:
    frame = make_cars(n, seed=seed)[list(FEATURES)]
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in frame.to_dict(orient="records")]


def single_calls(feats: list[dict[str, Any]], n: int, prefix: str) -> list[dict[str, Any]]:
    return [{"features": feats[i % len(feats)], "request_id": f"{prefix}{i:06d}"}
            for i in range(n)]


def wait_idle(pending: Callable[[str], int], queue: str = QUEUE,
              timeout: float = RESULT_TIMEOUT_S) -> float:
    """Block until nothing is pending on `queue`; returns the time it was first seen."""
    deadline = time.monotonic() + timeout
    while True:
        if pending(queue) == 0:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pending(queue)} messages still pending on {queue}")
        time.sleep(POLL_S)


class Broker:
    """Read-only view of the bench's Redis database: is every sent message acknowledged?"""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def pending(self, queue: str = QUEUE) -> int:
        """Messages queued, in flight (moved, not yet recorded) or delivered and unacked."""
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(queue)
        pipe.hlen(UNACKED)
        pipe.smembers(INFLIGHT_REGISTRY)
        queued, unacked, inflight_keys = pipe.execute()
        inflight = 0
        if inflight_keys:
            pipe = self.client.pipeline(transaction=False)
            for key in inflight_keys:
                pipe.llen(key)
            inflight = sum(pipe.execute())
        return int(queued) + int(unacked) + inflight

    def locate(self, task_ids: Sequence[str], queue: str = QUEUE) -> dict[str, list[str]]:
        """Where the given tasks' messages are now: queued, in an in-flight list, unacked,
        with a stored result, or nowhere (consumed and acknowledged, result lost)."""
        wanted = set(task_ids)
        where: dict[str, list[str]] = {}

        def ids(raws: Sequence[Any]) -> set[str]:
            return {json.loads(r)["headers"]["id"] for r in raws} & wanted

        for tid in ids(self.client.lrange(queue, 0, -1)):
            where.setdefault("queued", []).append(tid)
        for key in self.client.smembers(INFLIGHT_REGISTRY):
            for tid in ids(self.client.lrange(key, 0, -1)):
                where.setdefault(f"in-flight list {key!r}", []).append(tid)
        unacked = [json.loads(v)[0] for v in self.client.hvals(UNACKED)]
        for tid in ids([json.dumps(m).encode() for m in unacked]):
            where.setdefault("unacked (delivered, not acknowledged)", []).append(tid)
        placed = {t for found in where.values() for t in found}
        for tid in wanted - placed:
            stored = self.client.exists(f"celery-task-meta-{tid}")
            where.setdefault("result stored, not received" if stored
                             else "nowhere (acknowledged, no result)", []).append(tid)
        return where

    def wait_idle(self, queue: str = QUEUE, timeout: float = RESULT_TIMEOUT_S) -> float:
        return wait_idle(self.pending, queue, timeout)


class RowCounter:
    """Rows logged in model_predictions under a request_id prefix."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def count(self, prefix: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM model_predictions WHERE request_id LIKE :p"),
                {"p": prefix + "%"}).scalar_one())

    def batch_sizes(self, prefix: str) -> list[int]:
        """Rows per write: one transaction's rows share `prediction_time` (its start)."""
        with self.engine.connect() as conn:
            return [int(n) for n in conn.execute(text(
                "SELECT count(*) FROM model_predictions WHERE request_id LIKE :p "
                "GROUP BY prediction_time"), {"p": prefix + "%"}).scalars()]

    def version_mismatches(self, prefix: str, v2: str, threshold: float) -> int:
        """Rows whose logged version is not the one their value says computed it (v2's
        outputs are v1's shifted above `threshold`)."""
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM model_predictions WHERE request_id LIKE :p "
                "AND (model_version = :v2) <> (predicted_value > :t)"),
                {"p": prefix + "%", "v2": v2, "t": threshold}).scalar_one())

    def backends(self) -> list[int]:
        """Pids of this database's Postgres backends."""
        with self.engine.connect() as conn:
            return [int(p) for p in conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            ).scalars()]

    def wait_for(self, prefix: str, expected: int, timeout: float = 60.0) -> tuple[float, int]:
        """(perf_counter when `expected` rows were seen, rows seen) - or the shortfall."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.count(prefix)
            if found >= expected or time.monotonic() > deadline:
                return time.perf_counter(), found
            time.sleep(POLL_S * 4)


@dataclass
class Run:
    """One timed burst: `items` tasks (or rows) in `seconds`."""

    label: str
    items: int
    seconds: float
    errors: int = 0
    missing_rows: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.items / self.seconds


class Stuck(RuntimeError):
    """Some results never arrived; says where their messages are."""


def send_collect(app: Celery, task: str, calls: Sequence[dict[str, Any]], label: str,
                 items_per_call: int = 1, rows: tuple[RowCounter, str] | None = None,
                 queue: str | None = None, broker: Broker | None = None) -> Run:
    """Send every call as fast as possible, then collect every result (results stored);
    with `rows`, the clock stops only once all rows are in Postgres as well."""
    started = time.perf_counter()
    pending = [app.send_task(task, kwargs=kw, queue=queue) for kw in calls]
    sent = time.perf_counter()
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    results = []
    for n, p in enumerate(pending):
        try:
            results.append(p.get(timeout=max(0.1, deadline - time.monotonic())))
        except CeleryTimeout:
            lost = [q.id for q in pending[n:] if not q.ready()]
            where = broker.locate(lost, queue or QUEUE) if broker else {}
            raise Stuck(f"{label}: {len(lost)} of {len(pending)} results missing after "
                        f"{RESULT_TIMEOUT_S:.0f} s; "
                        + "; ".join(f"{k}: {len(v)} (e.g. {v[0]})" for k, v in where.items())
                        ) from None
    done = time.perf_counter()
    errors = sum(_errors(r) for r in results)
    missing = 0
    if rows is not None:
        counter, prefix = rows
        done, found = counter.wait_for(prefix, len(calls) * items_per_call - errors)
        missing = len(calls) * items_per_call - errors - found
    return Run(label, len(calls) * items_per_call, done - started, errors, missing,
               {"send_s": sent - started})


def send_forget(app: Celery, task: str, calls: Sequence[dict[str, Any]], label: str,
                broker: Broker, rows: tuple[RowCounter, str] | None = None,
                items_per_call: int = 1) -> Run:
    """Fire-and-forget: send with ignore_result; done when the queue, the in-flight lists
    and the `unacked` hash are empty (every message acknowledged) and, with `rows`, all
    rows are in Postgres."""
    started = time.perf_counter()
    for kw in calls:
        app.send_task(task, kwargs=kw, ignore_result=True)
    sent = time.perf_counter()
    done = broker.wait_idle()
    missing = 0
    if rows is not None:
        counter, prefix = rows
        done, found = counter.wait_for(prefix, len(calls) * items_per_call)
        missing = len(calls) * items_per_call - found
    return Run(label, len(calls) * items_per_call, done - started, 0, missing,
               {"send_s": sent - started})


def _errors(result: Any) -> int:
    if isinstance(result, dict):
        if "results" in result:
            return sum(1 for r in result["results"] if "error" in r) + (
                1 if "error" in result else 0)
        if isinstance(result.get("errors"), list):  # predict_batch, return_results=false
            return len(result["errors"])
        return 1 if "error" in result else 0
    return 0


@dataclass
class Latency:
    samples_ms: list[float]
    errors: int
    task_ids: list[str] = field(default_factory=list)

    def slowest(self, n: int = 3) -> list[tuple[float, str]]:
        return sorted(zip(self.samples_ms, self.task_ids, strict=True), reverse=True)[:n]

    @property
    def p50(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def sequential_latency(app: Celery, calls: Sequence[dict[str, Any]],
                       task: str = "predq.predict") -> Latency:
    """One call at a time: send, wait for its result, next."""
    samples: list[float] = []
    ids: list[str] = []
    errors = 0
    for kw in calls:
        started = time.perf_counter()
        pending = app.send_task(task, kwargs=kw)
        result = pending.get(timeout=60)
        samples.append((time.perf_counter() - started) * 1000)
        ids.append(pending.id)
        errors += _errors(result)
    return Latency(samples, errors, ids)


class BackgroundLoad:
    """A light stream of fire-and-forget single-row predicts from its own client app
    (Celery's result consumer is not shared across threads)."""

    def __init__(self, make_app: Callable[[], Celery], features: Sequence[dict[str, Any]],
                 prefix: str, rate_per_s: float) -> None:
        self._make_app = make_app
        self._features = features
        self.prefix = prefix
        self._interval = 1.0 / rate_per_s
        self._stop = threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="bench-background", daemon=True)

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        app = self._make_app()
        try:
            next_at = time.monotonic()
            while not self._stop.is_set():
                features = self._features[self.sent % len(self._features)]
                app.send_task("predq.predict", ignore_result=True, kwargs={
                    "features": features, "request_id": f"{self.prefix}{self.sent:07d}"})
                self.sent += 1
                next_at += self._interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            app.close()
