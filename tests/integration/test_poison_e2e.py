"""No single message takes a worker down (issue 19): real workers on both pools.

A 900-deep feature value used to end a prefork worker (`RecursionError ... while pickling`
in the main process), and with late acks the message came back for the next worker. Each
case here is sent beside good requests in flight; the poison one gets a clear error that
names the field, the good ones succeed, the worker keeps serving, and a message that
cannot be decoded or dispatched ends parked in `predq.dead`, not redelivered.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from modelstore.defaults import DEAD_LETTER_QUEUE
from tests.support import models
from tests.support.rawwire import deep_list, features_with, parked, publish, task_body
from tests.support.workerproc import WorkerProcess, client_app, running_workers, worker_env

pytestmark = pytest.mark.e2e

POOLS = ["prefork", "threads"]
GOOD = models.rows(20, seed=11)


def _send_good(app: Celery, tag: str) -> list[tuple[str, AsyncResult]]:
    ids = [f"{tag}-good-{i}" for i in range(len(GOOD))]
    return [(rid, app.send_task("predq.predict", kwargs={"features": f, "request_id": rid}))
            for rid, f in zip(ids, GOOD, strict=True)]


def _send_deep(app: Celery, depth: int) -> str:
    """The deep value as raw JSON text: no Python encoder recursion on the way."""
    task_id = f"deep-{depth}-{uuid.uuid4().hex[:8]}"
    kwargs = '{"features": ' + features_with(GOOD[0], "mileage", deep_list(depth)) + \
        f', "request_id": "{task_id}"' + "}"
    publish(app, "predq.predict", task_id, task_body(kwargs))
    return task_id


def _assert_good(pending: list[tuple[str, AsyncResult]]) -> None:
    for rid, result in pending:
        value = result.get(timeout=120)
        assert value["request_id"] == rid and "prediction" in value, value


def _drained(client: redis.Redis, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.llen("predq") == 0 and client.hlen("unacked") == 0:
            return True
        time.sleep(0.2)
    return False


def _poison_lines(worker: WorkerProcess, task_id: str) -> list[str]:
    return [ln for ln in worker.log_tail(2_000_000).splitlines()
            if "poison message" in ln and task_id in ln]


def _start(pg_url: str, redis_url: str, tmp_path: Path, pool: str, **env_extra: str
           ) -> tuple[dict[str, str], Celery, dict[str, Any]]:
    models.register(pg_url, "v1")
    env = worker_env(pg_url, redis_url, tmp_path, **env_extra)
    # Prefork with 2 processes: more poison messages than pool slots, so a slot leaked by
    # a failed hand-over would stall the worker.
    kwargs: dict[str, Any] = {"pool": pool, "concurrency": 2 if pool == "prefork" else 8}
    return env, client_app(env), kwargs


@pytest.mark.parametrize("pool", POOLS)
def test_deep_values_fail_alone_with_a_clear_error(pg_url: str, redis_url: str,
                                                   tmp_path: Path, pool: str) -> None:
    env, app, kwargs = _start(pg_url, redis_url, tmp_path, pool)
    client = redis.Redis.from_url(redis_url)
    with running_workers(env, tmp_path, app=app, **kwargs) as (worker,):
        before = _send_good(app, "before")
        poison = [_send_deep(app, 900), _send_deep(app, 100_000), _send_deep(app, 900)]
        after = _send_good(app, "after")
        answers = [AsyncResult(t, app=app).get(timeout=120) for t in poison]
        _assert_good(before + after)
        for answer in answers:
            assert answer["request_id"] is None
            assert answer["error"].startswith("features.mileage[0]"), answer
            assert "nested more than 32 levels deep" in answer["error"]
        # The worker keeps serving, and nothing is redelivered.
        _assert_good(_send_good(app, "later"))
        assert worker.proc is not None and worker.proc.poll() is None
        assert _drained(client)
        for task_id in poison:
            assert len(_poison_lines(worker, task_id)) == 1, worker.log_tail()
        assert "Unrecoverable error" not in worker.log_tail(2_000_000)
    entries = {e["task_id"]: e for e in parked(client)}
    assert set(entries) == set(poison)
    entry = entries[poison[1]]
    assert entry["queue"] == "predq" and entry["task"] == "predq.predict"
    assert entry["reason"].startswith("features.mileage[0]")
    assert isinstance(entry["parked_at"], float) and entry["parked_at"] <= time.time()
    envelope = json.loads(entry["message"])
    assert envelope["headers"]["id"] == poison[1]


@pytest.mark.parametrize("pool", POOLS)
def test_undispatchable_message_is_parked_not_redelivered(pg_url: str, redis_url: str,
                                                          tmp_path: Path, pool: str) -> None:
    """With the decoder's bound raised past the pickler's reach, a 900-deep value gets
    through decoding; the prefork hand-over then fails in the main process. That message
    is parked and answered, its pool slot is given back, and the worker keeps serving."""
    env, app, kwargs = _start(pg_url, redis_url, tmp_path, pool,
                              PREDQ_MAX_JSON_DEPTH="1000")
    client = redis.Redis.from_url(redis_url)
    with running_workers(env, tmp_path, app=app, **kwargs) as (worker,):
        before = _send_good(app, "before")
        poison = [_send_deep(app, 900) for _ in range(4)]
        after = _send_good(app, "after")
        answers = [AsyncResult(t, app=app).get(timeout=120) for t in poison]
        _assert_good(before + after)
        _assert_good(_send_good(app, "later"))
        assert worker.proc is not None and worker.proc.poll() is None
        assert _drained(client)
        log = worker.log_tail(2_000_000)
        assert "Unrecoverable error" not in log
    if pool == "prefork":
        for answer in answers:
            assert answer["error"].startswith(
                "message could not be handed to the worker pool: RecursionError"), answer
        assert sorted(e["task_id"] for e in parked(client)) == sorted(poison)
    else:
        # No pickling on the threads pool: the task's own validation names the field.
        for answer in answers:
            assert answer["error"].startswith("features.mileage:"), answer
        assert client.llen(DEAD_LETTER_QUEUE) == 0


def test_deep_headers_are_parked(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """Headers are pickled to prefork children with the request: bounded likewise. A
    900-deep header is answered and parked by the task's guard; a 100,000-deep one
    (written into the queue as raw text) by the transport, before kombu decodes it."""
    env, app, kwargs = _start(pg_url, redis_url, tmp_path, "prefork")
    client = redis.Redis.from_url(redis_url)
    deep: Any = []
    for _ in range(900):
        deep = [deep]
    body = task_body('{"features": ' + json.dumps(GOOD[0]) + "}")
    with running_workers(env, tmp_path, app=app, **kwargs) as (worker,):
        task_id = f"deep-header-{uuid.uuid4().hex[:8]}"
        publish(app, "predq.predict", task_id, body, headers={"x-deep": deep})
        answer = AsyncResult(task_id, app=app).get(timeout=120)
        envelope = json.dumps({"body": body.decode(), "content-type": "application/json",
                               "content-encoding": "utf-8", "headers": {
                                   "task": "predq.predict", "id": "raw-deep", "x": "@"},
                               "properties": {"delivery_tag": "t1", "delivery_info": {
                                   "exchange": "", "routing_key": "predq"}}})
        client.lpush("predq", envelope.replace('"@"', deep_list(100_000)))
        good = _send_good(app, "after")
        _assert_good(good)
        assert _drained(client)
        assert worker.proc is not None and worker.proc.poll() is None
        assert "Unrecoverable error" not in worker.log_tail(2_000_000)
    assert answer["error"] == "headers: nested more than 32 levels deep"
    entries = parked(client)
    assert [e["task_id"] for e in entries] == [None, task_id]
    assert entries[0]["reason"].startswith("undecodable envelope: headers.x[0]")
    assert entries[0]["message"].startswith('{"body": ')


@pytest.mark.parametrize("pool", POOLS)
def test_lone_surrogate_fails_alone_naming_the_field(pg_url: str, redis_url: str,
                                                     tmp_path: Path, pool: str) -> None:
    """A lone surrogate in a string feature (which Postgres's JSON refuses) is refused at
    validation with the field named; its neighbours, batched with it, are predicted and
    logged, and the worker keeps serving (issue 19 item 2, issue 12 item 7)."""
    env, app, kwargs = _start(pg_url, redis_url, tmp_path, pool)
    with running_workers(env, tmp_path, app=app, **kwargs) as (worker,):
        before = _send_good(app, "before")
        bad = app.send_task("predq.predict", kwargs={
            "features": {**GOOD[0], "brand": "\ud800"}, "request_id": "surrogate"})
        after = _send_good(app, "after")
        answer = bad.get(timeout=120)
        _assert_good(before + after)
        assert answer["request_id"] == "surrogate"
        assert answer["error"].startswith("features.brand"), answer
        assert "prediction" not in answer
        _assert_good(_send_good(app, "later"))
        assert worker.proc is not None and worker.proc.poll() is None
