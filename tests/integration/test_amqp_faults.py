"""RabbitMQ under faults: a cut-off worker's messages come back within 30 s (the AMQP
heartbeat), a broker restart under load loses no confirmed task, and a publish the broker
refuses surfaces as BrokerUnavailable instead of vanishing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from modelstore.defaults import DEFAULT_QUEUE
from modelstore.settings import Settings
from producer.client import PredqClient
from producer.errors import BrokerUnavailable
from tests.faults.tcpproxy import tcp_proxy
from tests.support import models, rabbit
from tests.support.db import fetch
from tests.support.workerproc import WorkerProcess, client_app, running_workers, worker_env

pytestmark = pytest.mark.e2e

CUT_OFF_DEADLINE_S = 30.0
AMQP_PORT = 5672


def logged(url: str) -> list[str]:
    return [str(r[0]) for r in fetch(url, "SELECT request_id FROM model_predictions")]


def ready_count(url: str) -> int:
    with Connection(url) as conn:
        return int(conn.default_channel.queue_declare(DEFAULT_QUEUE, passive=True).message_count)


def wait_for(check: Any, timeout: float, step: float = 0.2) -> float:
    """Seconds until check() is true; AssertionError after timeout."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout}s: {check.__doc__ or check}")
        time.sleep(step)
    return time.monotonic() - started


def test_cut_off_worker_messages_are_requeued_within_30s(
        pg_url: str, amqp_url: str, redis_url: str, tmp_path: Path) -> None:
    """Worker A reaches RabbitMQ through a proxy that goes silent (a dead link, no RST): the
    broker must notice by the heartbeat, close A's connection and requeue what A held."""
    models.register(pg_url, "v1")
    env = worker_env(pg_url, amqp_url, tmp_path, PREDQ_RESULT_BACKEND=redis_url)
    app = client_app(env)
    with tcp_proxy(AMQP_PORT) as proxy:
        via_proxy = amqp_url.replace(f":{AMQP_PORT}/", f":{proxy.port}/")
        cut_env = {**env, "PREDQ_BROKER_URL": via_proxy}
        victim = WorkerProcess(cut_env, "cutoff", tmp_path / "cutoff.log", concurrency=4)
        try:
            victim.start()
            victim.wait_ready(app)
            with running_workers(env, tmp_path, names=("rescuer",), app=app):
                proxy.stall()
                stalled_at = time.monotonic()
                ids = [f"cut-{i}" for i in range(40)]
                for i, rid in enumerate(ids):
                    app.send_task("predq.predict", kwargs={"features": models.rows(40)[i],
                                                           "request_id": rid},
                                  ignore_result=True)
                time.sleep(5)  # the rescuer takes what is not stuck in the dead link
                held = len(ids) - len(set(logged(pg_url)))
                wait_for(lambda: set(logged(pg_url)) == set(ids), timeout=90)
                recovered_s = time.monotonic() - stalled_at
        finally:
            proxy.stall(False)
            victim.stop()
    print(f"cut-off worker held {held}; all rows logged {recovered_s:.1f}s after the cut")
    rows = logged(pg_url)
    assert held > 0 and len(rows) == len(set(rows)) == len(ids)
    assert recovered_s <= CUT_OFF_DEADLINE_S, (
        f"{held} messages held by the cut-off worker came back after {recovered_s:.1f}s")


@contextmanager
def rabbit_down() -> Iterator[None]:
    """Stop the RabbitMQ app on this node; always started again."""
    rabbit.rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbit.rabbitmqctl("start_app")
        rabbit.rabbitmqctl("await_startup")


def test_rabbitmq_restart_under_load_loses_no_confirmed_task(
        pg_url: str, amqp_url: str, redis_url: str, tmp_path: Path,
        vhost_reaper: rabbit.VhostReaper) -> None:
    vhost_reaper.wait()  # earlier tests' vhost deletions finish before the app stops
    models.register(pg_url, "v1")
    env = worker_env(pg_url, amqp_url, tmp_path, PREDQ_RESULT_BACKEND=redis_url)
    feats = models.rows(50)
    confirmed: list[str] = []
    errors: list[str] = []
    phase = {"name": "before"}
    after_ok: list[str] = []
    stop = threading.Event()

    def produce(client: PredqClient) -> None:
        i = 0
        while not stop.is_set():
            rid = f"restart-{i}"
            try:
                client.send(feats[i % len(feats)], request_ids=[rid])
                confirmed.append(rid)
                if phase["name"] == "after":
                    after_ok.append(rid)
            except BrokerUnavailable as exc:
                errors.append(f"{phase['name']}: {exc}")
                time.sleep(0.2)
            i += 1
            time.sleep(0.01)

    with running_workers(env, tmp_path, names=("restart",)), \
            PredqClient(Settings.from_env(env)) as client:
        producer = threading.Thread(target=produce, args=(client,))
        producer.start()
        try:
            wait_for(lambda: len(set(logged(pg_url))) >= 50, timeout=60)
            with rabbit_down():
                phase["name"] = "down"
                wait_for(lambda: any(e.startswith("down") for e in errors), timeout=30)
            phase["name"] = "after"
            wait_for(lambda: len(after_ok) >= 50, timeout=60)
        finally:
            stop.set()
            producer.join(timeout=60)
        wait_for(lambda: set(confirmed) <= set(logged(pg_url)), timeout=120)
    rows = logged(pg_url)
    assert len(rows) == len(set(rows)), "a task was logged twice"
    assert set(confirmed) <= set(rows)
    down = [e for e in errors if e.startswith("down")]
    assert down and all("cannot send predq.predict: broker amqp://guest:***@" in e
                        for e in down), down[:3]


def test_a_publish_the_broker_refuses_raises_broker_unavailable(
        amqp_url: str, redis_url: str, tmp_path: Path) -> None:
    """A queue at its length limit with reject-publish nacks the publish: with publisher
    confirms the producer hears it."""
    vhost = amqp_url.rsplit("/", 1)[1]
    env = worker_env("postgresql://unused/none", amqp_url, tmp_path,
                     PREDQ_RESULT_BACKEND=redis_url)
    rabbit.rabbitmqctl("set_policy", "-p", vhost, "full", f"^{DEFAULT_QUEUE}$",
                       '{"max-length": 1, "overflow": "reject-publish"}', "--apply-to", "queues")
    accepted, refused = 0, []
    with PredqClient(Settings.from_env(env)) as client:
        for _ in range(5):  # a quorum queue enforces its length limit a little late
            try:
                client.send(models.rows(1)[0])
                accepted += 1
            except BrokerUnavailable as exc:
                refused.append(str(exc))
                break
    assert refused and "cannot send predq.predict" in refused[0], refused
    assert ready_count(amqp_url) == accepted  # every send that returned is in the queue
