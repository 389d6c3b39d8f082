"""Poison messages end up parked in `predq.dead`, and `predq dead list|requeue|purge` handle
them: on RabbitMQ (a quorum queue's delivery limit dead-letters them) and on Redis (the
worker-side parking format). Requeued messages run on a real worker."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from kombu import Connection

from modelstore.defaults import DEAD_QUEUE, DEFAULT_QUEUE
from producer.cli import cli
from producer.cli_context import CliState
from tests.support import models, rabbit
from tests.support.db import fetch
from tests.support.workerproc import client_app, running_workers, worker_env

pytestmark = pytest.mark.e2e

LIMIT = 2


def predq(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(cli, list(args), obj=CliState(), env=env)
    assert result.exit_code == 0, f"predq {' '.join(args)}: {result.output}{result.exception!r}"
    return result.output


def logged(url: str) -> set[str]:
    return {str(r[0]) for r in fetch(url, "SELECT request_id FROM model_predictions")}


def wait_logged(url: str, request_id: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while request_id not in logged(url):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def crash_consumer_once(url: str) -> bool:
    """Take one predq message unacknowledged and drop the connection: what RabbitMQ sees
    when a worker dies mid-task. False when the queue was empty."""
    with Connection(url) as conn:
        channel = conn.channel()
        message = channel.basic_get(DEFAULT_QUEUE, no_ack=False)
        conn.collect()  # no close handshake, no ack: the message returns to the queue
        return message is not None


def ready_count(url: str, queue: str) -> int:
    with Connection(url) as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def crash_until_parked(url: str, timeout: float = 60) -> int:
    """Crash consumers on the message until RabbitMQ parks it; the number of crashes."""
    crashes, deadline = 0, time.monotonic() + timeout
    while ready_count(url, DEAD_QUEUE) == 0:
        assert time.monotonic() < deadline, f"not parked after {crashes} crashes"
        if crash_consumer_once(url):
            crashes += 1
        else:
            time.sleep(0.05)  # the last crash's message is on its way back
    return crashes


def test_amqp_poison_message_is_parked_after_the_delivery_limit_then_requeued(
        pg_url: str, amqp_url: str, redis_url: str, tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    vhost = amqp_url.rsplit("/", 1)[1]
    env = worker_env(pg_url, amqp_url, tmp_path, PREDQ_RESULT_BACKEND=redis_url,
                     PREDQ_DELIVERY_LIMIT=str(LIMIT))
    app = client_app(env)
    with running_workers(env, tmp_path, names=("declare",), app=app):
        pass  # a worker declared the task queue and the dead-letter queue
    assert rabbit.queue_types(vhost)[DEFAULT_QUEUE] == "quorum"
    assert rabbit.queue_types(vhost)[DEAD_QUEUE] == "quorum"
    app.send_task("predq.predict", kwargs={"features": models.rows(1)[0],
                                           "request_id": "poison-1"}, task_id="task-poison-1")
    assert crash_until_parked(amqp_url) == LIMIT + 1
    assert (ready_count(amqp_url, DEFAULT_QUEUE), ready_count(amqp_url, DEAD_QUEUE)) == (0, 1)

    listed = json.loads(predq(env, "dead", "list", "--json"))
    assert len(listed) == 1, listed
    assert listed[0]["task"] == "predq.predict" and listed[0]["task_id"] == "task-poison-1"
    assert listed[0]["queue"] == DEFAULT_QUEUE and listed[0]["reason"] == "delivery_limit"
    assert "predq.predict  id=task-poison-1" in predq(env, "dead", "list")
    assert ready_count(amqp_url, DEAD_QUEUE) == 1  # listing removes nothing

    assert "requeued 1 message(s)" in predq(env, "dead", "requeue")
    with running_workers(env, tmp_path, names=("after",), app=app):
        assert wait_logged(pg_url, "poison-1"), "the requeued task never ran"
    assert json.loads(predq(env, "dead", "list", "--json")) == []

    app.send_task("predq.predict", kwargs={"features": models.rows(1)[0]})
    assert crash_until_parked(amqp_url) == LIMIT + 1
    assert "purged 1 message(s)" in predq(env, "dead", "purge", "--yes")
    assert (ready_count(amqp_url, DEFAULT_QUEUE), ready_count(amqp_url, DEAD_QUEUE)) == (0, 0)


def park_on_redis(url: str, reason: str) -> dict[str, Any]:
    """Park the message at the head of the predq list the way workers do (issue 19)."""
    client = redis.Redis.from_url(url)
    try:
        raw = client.rpop(DEFAULT_QUEUE)
        assert raw is not None
        envelope = json.loads(raw)
        entry = {"reason": reason, "parked_at": time.time(), "queue": DEFAULT_QUEUE,
                 "task": envelope["headers"]["task"], "task_id": envelope["headers"]["id"],
                 "message": raw.decode()}
        client.lpush(DEAD_QUEUE, json.dumps(entry))
        return entry
    finally:
        client.close()


def test_redis_parked_messages_are_listed_requeued_and_purged(
        pg_url: str, redis_url: str, tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    env = worker_env(pg_url, redis_url, tmp_path)
    app = client_app(env)
    for i in range(2):
        app.send_task("predq.predict", kwargs={"features": models.rows(1)[0],
                                               "request_id": f"parked-{i}"},
                      task_id=f"task-parked-{i}")
    first = park_on_redis(redis_url, "worker died 3 times running it")
    park_on_redis(redis_url, "worker died 3 times running it")

    listed = json.loads(predq(env, "dead", "list", "--json"))
    assert [m["task_id"] for m in listed] == ["task-parked-1", "task-parked-0"]  # newest first
    assert listed[1] == {"queue": DEFAULT_QUEUE, "reason": first["reason"],
                         "task": "predq.predict", "task_id": "task-parked-0",
                         "parked_at": first["parked_at"], "deliveries": None}

    assert "requeued 1 message(s)" in predq(env, "dead", "requeue", "--limit", "1")
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.lrange(DEFAULT_QUEUE, 0, -1) == [first["message"].encode()]
        with running_workers(env, tmp_path, names=("redisdead",), app=app):
            assert wait_logged(pg_url, "parked-0"), "the requeued task never ran"
        assert "parked-1" not in logged(pg_url)  # still parked

        client.lpush(DEAD_QUEUE, b"not json")
        result = CliRunner().invoke(cli, ["dead", "requeue"], obj=CliState(), env=env)
        assert result.exit_code == 1, result.output  # the oldest (a real one) went first
        assert "requeued 1 message(s), then stopped" in result.output
        assert "not a parked message" in result.output
        requeued = json.loads(client.lrange(DEFAULT_QUEUE, 0, -1)[0])
        assert requeued["headers"]["id"] == "task-parked-1"
        assert "unreadable entry" in predq(env, "dead", "list")
        assert client.llen(DEAD_QUEUE) == 1  # the unreadable entry is left alone
        assert "purged 1 message(s)" in predq(env, "dead", "purge", "--yes")
        assert client.llen(DEAD_QUEUE) == 0
    finally:
        client.close()
