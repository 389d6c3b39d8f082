"""Redis (broker and result backend) restarted under load: a private redis-server with an
fsync-always append-only file, stopped for a few seconds and started again on its port.

Workers and the producer must reconnect on their own; every request the producer was told
was enqueued gets exactly one row; every request it could not enqueue gets a clear error
in bounded time (no hang, no silent drop).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelstore.errors import PredqError
from modelstore.settings import Settings
from producer.client import PredqClient
from tests.conftest import unavailable
from tests.faults.dbcheck import id_counts, query, wait_until
from tests.faults.producers import Attempt, ProducerLoop
from tests.faults.redisproc import RedisServer
from tests.faults.report import ReportFn
from tests.faults.stack import fault_env
from tests.support import models
from tests.support.workerproc import WorkerProcess, client_app

pytestmark = [pytest.mark.e2e, pytest.mark.faults,
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]

DOWN_S = 3.0
LOAD_S = 3.0
PREDICT_TIMEOUT_S = 10.0
HANG_S = 60.0
FEATURES = models.rows(50, seed=3)


def _loops(client: PredqClient) -> tuple[ProducerLoop, ProducerLoop]:
    def fire(rid: str) -> object:
        return client.send(FEATURES[hash(rid) % len(FEATURES)], request_ids=[rid])

    def round_trip(rid: str) -> object:
        return client.predict(FEATURES[hash(rid) % len(FEATURES)], request_id=rid,
                              timeout=PREDICT_TIMEOUT_S)

    return ProducerLoop("send", fire, pause=0.01), ProducerLoop("predict", round_trip)


def _release(client: PredqClient) -> None:
    """Close the client while Redis is up: pending AsyncResults unsubscribe now, not in a
    finalizer later (Celery's would retry against a stopped server for ~19 s)."""
    client.close()
    gc.collect()


def _pings(env: dict[str, str], worker: WorkerProcess) -> bool:
    """The worker answers a ping from a fresh client (its own connection) within 20 s."""
    fresh = client_app(env)
    try:
        return wait_until(lambda: bool(fresh.control.ping(destination=[worker.nodename],
                                                          timeout=1.0)), timeout=20)
    finally:
        fresh.close()


BURST = 1_000


def _burst(app: Any, prefix: str) -> set[str]:
    """Enqueue BURST fire-and-forget tasks as fast as possible: a queue backlog at the stop."""
    ids = {f"{prefix}-{i}" for i in range(BURST)}
    for rid in ids:
        app.send_task("predq.predict", kwargs={"features": FEATURES[0], "request_id": rid},
                      ignore_result=True)
    return ids


def _settled(url: str, sent: set[str], timeout: float) -> dict[str, int]:
    """Rows once every enqueued id is logged, or once the row count stopped moving for
    12 s: longer than the 5 s visibility timeout plus the 1 s restore sweep, after which
    an abandoned (unacked) task is redelivered."""
    counts: dict[str, int] = {}
    last = (-1, time.monotonic())

    def done() -> bool:
        nonlocal counts, last
        counts = id_counts(url)
        if len(counts) != last[0]:
            last = (len(counts), time.monotonic())
        return sent <= set(counts) or time.monotonic() - last[1] > 12.0

    wait_until(done, timeout, interval=0.5)
    return counts


@dataclass
class Restart:
    """What the producer loops and the database saw around one Redis restart."""

    fire: ProducerLoop
    trip: ProducerLoop
    hung: list[float | None]
    sent: set[str]
    queued: int
    acked_before: set[str]
    after_ok: set[str]
    counts: dict[str, int]
    worker_alive: bool
    pinged: bool

    @property
    def failed(self) -> list[Attempt]:
        return self.fire.failed() + self.trip.failed()


def _restart_under_load(server: RedisServer, env: dict[str, str], worker: WorkerProcess,
                        client: PredqClient, url: str, tmp: Path) -> Restart:
    fire, trip = _loops(client)
    fire.start()
    trip.start()
    time.sleep(LOAD_S)
    burst_app = client_app(env)
    try:
        backlog = _burst(burst_app, "burst")
    finally:
        burst_app.close()
    queued = int(server.client().llen("predq"))
    stopped_at = time.monotonic()
    server.stop()
    time.sleep(DOWN_S)
    server.start()
    restarted_at = time.monotonic()
    time.sleep(LOAD_S)
    hung = [fire.stop(HANG_S), trip.stop(HANG_S)]
    alive = worker.proc is not None and worker.proc.poll() is None
    pinged = _pings(env, worker) if alive else False
    sent = fire.ok_ids() | trip.ok_ids() | backlog
    replacement = None
    if not alive:  # what a supervisor would do: start a fresh worker to drain the queue
        replacement = WorkerProcess(env, "redisrestart2", tmp / "redisrestart2.log")
        replacement.start()
    try:
        if replacement is not None:
            replacement.wait_ready(client_app(env))
        counts = _settled(url, sent, timeout=90)
    finally:
        if replacement is not None:
            replacement.stop()
    after_ok = {a.request_id for a in fire.attempts + trip.attempts
                if a.ok and a.started > restarted_at}
    return Restart(fire, trip, hung, sent, queued, trip.ok_ids(before=stopped_at), after_ok,
                   counts, alive, pinged)


UPSTREAM_CRASH = ("Unrecoverable error: AttributeError(\"'NoneType' object has no attribute "
                  "'hostname'\")")
RECONNECT_CRASH_BUG = (
    "intermittent (about 1 Redis restart in 6, with predq's ReliableTransport and with "
    "kombu's stock one alike): on 'Connection to broker lost' Celery closes the connection, "
    "kombu's Channel.close -> restore_unacked -> _connparams finds connection.client None "
    "and raises AttributeError, which ignore_errors() does not swallow: the worker logs "
    "'Unrecoverable error' and exits instead of reconnecting (kombu/celery 5.7.0)")


def _worker_outcome(run: Restart, crashed: bool) -> str:
    if crashed:
        return ("the worker DIED on the connection loss (kombu AttributeError, 'Unrecoverable "
                "error') instead of reconnecting; a replacement worker drained the queue")
    return (f"worker reconnected by itself (alive: {run.worker_alive}, answers ping: "
            f"{run.pinged})")


@pytest.mark.parametrize("persist", [True, False], ids=["appendonly-fsync-always",
                                                        "no-persistence"])
def test_redis_restart_under_load(pg_url: str, tmp_path: Path, persist: bool,
                                  fault_report: ReportFn) -> None:
    models.register(pg_url, "v1")
    server = RedisServer(tmp_path / "redis", persist=persist)
    try:
        server.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        unavailable("private redis-server", exc)
    env = fault_env(pg_url, server.url(0), tmp_path, PREDQ_VISIBILITY_TIMEOUT="5")
    worker = WorkerProcess(env, "redisrestart", tmp_path / "redisrestart.log")
    client = PredqClient(Settings.from_env(env))
    try:
        worker.start()
        worker.wait_ready(client_app(env))
        run = _restart_under_load(server, env, worker, client, pg_url, tmp_path)
    finally:
        _release(client)
        worker.stop()
        server.stop()

    crashed = not run.worker_alive and UPSTREAM_CRASH in worker.log_tail(10**7)
    unclear = [a for a in run.failed if not a.clear]
    lost = sorted(run.sent - set(run.counts))
    dupes = {k: v for k, v in run.counts.items() if v != 1}
    ran_anyway = {a.request_id for a in run.failed} & set(run.counts)
    kinds = run.fire.error_kinds() + run.trip.error_kinds()
    mode = ("append-only file, fsync always" if persist else
            "no persistence: `--save '' --appendonly no`")
    fault_report(
        f"Redis (broker + result backend; {mode}) stopped for {DOWN_S:.0f} s and restarted "
        f"under load: fire-and-forget `send`, round-trip `predict`, and a {BURST:,}-task "
        "backlog enqueued just before the stop",
        f"{_worker_outcome(run, crashed)}; the producer reconnected by itself "
        f"({len(run.after_ok):,} requests accepted after the restart); while down every "
        f"call failed with {dict(kinds)}",
        f"{len(run.sent):,} requests enqueued OK ({run.queued:,} queued at the stop): "
        f"{len(lost):,} lost, {len(dupes)} duplicated; {len(run.acked_before):,} answered "
        f"before the stop, {len(run.acked_before - set(run.counts))} of them unlogged; "
        f"{len(run.failed):,} refused with a clear error "
        f"(slowest {max((a.seconds for a in run.failed), default=0.0):.1f} s, "
        f"{len(ran_anyway)} ran anyway), {len(unclear)} unclear, "
        f"{sum(h is not None for h in run.hung)} hung")

    assert all(h is None for h in run.hung), f"a producer call hung for {run.hung} s"
    if crashed:
        pytest.xfail(RECONNECT_CRASH_BUG)
    assert run.worker_alive and run.pinged, worker.log_tail(6000)
    assert run.after_ok, "the producer enqueues again after the restart"
    assert run.failed, "the producer saw the outage"
    assert not unclear, "unclear producer errors: " + "; ".join(
        f"{a.error[:200]} after {a.seconds:.1f} s" for a in unclear[:5] if a.error)
    assert not dupes
    assert run.acked_before <= set(run.counts)
    if persist:  # without persistence what sat in Redis at the stop vanishes with it
        assert not lost, f"{len(lost)} enqueued requests have no row: {lost[:10]}"


def _private_redis(workdir: Path) -> RedisServer:
    server = RedisServer(workdir)
    try:
        return server.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        unavailable("private redis-server", exc)
        raise


ROUND_TRIP_BUG = (
    "PredqClient.predict while Redis is down, on a client whose result consumer has not "
    "started yet (e.g. it only sent fire-and-forget requests so far): Celery's Redis result "
    "backend retries 20 times (~19 s, ignoring timeout=) and raises a bare RuntimeError "
    "'Retry limit exceeded ... The Celery application must be restarted', which "
    "PredqClient._send does not translate into BrokerUnavailable")


def test_round_trip_while_redis_is_down_raises_a_clear_error(tmp_path: Path,
                                                              fault_report: ReportFn) -> None:
    server = _private_redis(tmp_path / "redis")
    client = PredqClient(Settings.from_env({"PREDQ_BROKER_URL": server.url(0),
                                            "PREDQ_CONNECT_TIMEOUT": "2"}))
    error: BaseException | None = None
    try:
        client.send(FEATURES[0])  # reachable, fire and forget: no result consumer yet
        server.stop()
        started = time.monotonic()
        try:
            client.predict(FEATURES[0], timeout=3)
        except Exception as exc:  # noqa: BLE001 - the measured outcome
            error = exc
        took = time.monotonic() - started
        server.start()
        recovered = bool(client.send(FEATURES[0]))
    finally:
        _release(client)
        server.stop()
    shown = f"{type(error).__name__}: {' '.join(str(error).split())}"
    fault_report("Round-trip `PredqClient.predict(timeout=3)` while Redis is down (client "
                 "had only sent fire-and-forget requests)", f"raised {shown[:160]}",
                 f"after {took:.1f} s; the same client enqueued again after the restart: "
                 f"{recovered}")
    assert isinstance(error, PredqError) and server.url(0).split("@")[-1] in str(error), shown


BROADCAST_BUG = (
    "after a Redis restart the producer's first broadcast (PredqClient.promote / serving / "
    "reload) reuses a dead pooled connection and raises BrokerUnavailable 'unreachable: "
    "Connection closed by server' although Redis is up; for promote the database has "
    "already moved production, so ops are told a committed promote failed. "
    "PredqClient._broadcast does not retry once on a connection error")


def test_promote_right_after_a_redis_restart(pg_url: str, tmp_path: Path,
                                             fault_report: ReportFn) -> None:
    models.register(pg_url, "v1")
    models.register(pg_url, "v2", offset=models.V2_OFFSET, promote=False)
    server = _private_redis(tmp_path / "redis")
    client = PredqClient(Settings.from_env({"PREDQ_BROKER_URL": server.url(0),
                                            "DATABASE_URL": pg_url}))
    outcome: str
    try:
        client.serving(timeout=0.3)  # an ops call before the restart: a pooled connection
        server.stop()
        server.start()
        try:
            report = client.promote("v2", timeout=1.0)
            outcome = f"PromoteReport to {report.to_version} (generation {report.generation})"
        except PredqError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        second = client.serving(timeout=0.3)
    finally:
        _release(client)
        server.stop()
    pointer = query(pg_url, "SELECT model_version, generation FROM production_pointer")[0]
    fault_report("`PredqClient.promote` right after a Redis restart (Redis up again)",
                 f"first call: {outcome[:160]}",
                 f"database pointer afterwards: {pointer[0]} (generation {pointer[1]}); the "
                 f"next broadcast worked ({len(second)} rows)")
    assert outcome.startswith("PromoteReport"), outcome
