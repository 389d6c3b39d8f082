"""The kombu internals workers/transport.py relies on, checked on a real Redis (issue 12,
item 9): its `unacked` records have kombu's own format, and a consumer that dies with a
message in flight has that message returned by another consumer."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import redis
from kombu import Connection, Exchange, Queue

from workers.transport import INFLIGHT_SEP, OWNER_PREFIX, ReliableTransport

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "predq-internals-test"
OPTIONS = {"visibility_timeout": 3600, "priority_steps": [0]}


def _queue() -> Queue:
    return Queue(QUEUE, Exchange(QUEUE, "direct"), QUEUE)


def _publish(conn: Connection, body: dict[str, Any]) -> None:
    with conn.Producer(serializer="json") as producer:
        producer.publish(body, exchange=_queue().exchange, routing_key=QUEUE,
                         declare=[_queue()])


def _consume_one(conn: Connection) -> Any:
    got: list[Any] = []
    with conn.Consumer(_queue(), callbacks=[lambda body, _m: got.append(body)],
                       accept=["json"]):
        conn.drain_events(timeout=10)
    return got[0]


def _unacked_record(url: str, transport: Any, body: dict[str, Any]) -> list[Any]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    with Connection(url, transport=transport, transport_options=OPTIONS) as conn:
        _publish(conn, body)
        assert _consume_one(conn) == body
        records = list(client.hgetall("unacked").values())
    client.flushdb()
    assert len(records) == 1
    record = json.loads(records[0])
    assert isinstance(record, list)
    return record


def test_unacked_record_has_kombus_own_format(redis_url: str) -> None:
    body = {"features": {"brand": "Škoda", "year": 2020}, "request_id": "fmt-1"}
    stock = _unacked_record(redis_url, "redis", body)
    ours = _unacked_record(redis_url, ReliableTransport, body)
    assert len(stock) == len(ours) == 3, (stock, ours)
    assert stock[1:] == ours[1:] == [QUEUE, QUEUE]
    message_stock, message_ours = stock[0], ours[0]
    assert set(message_stock) == set(message_ours)
    assert set(message_stock["properties"]) == set(message_ours["properties"])
    assert message_stock["body"] == message_ours["body"]
    for key in ("content-type", "content-encoding"):
        assert message_stock[key] == message_ours[key]


DIE_IN_FLIGHT = textwrap.dedent("""
    import os, signal, sys
    from kombu import Connection, Exchange, Queue
    from workers.transport import ReliableTransport

    url, name = sys.argv[1], sys.argv[2]
    queue = Queue(name, Exchange(name, "direct"), name)
    conn = Connection(url, transport=ReliableTransport,
                      transport_options={"visibility_timeout": 3600, "priority_steps": [0]})
    channel = conn.default_channel

    def die(*_args, **_kwargs):
        # Fetched (BLMOVE'd into this consumer's in-flight list), not yet recorded in
        # `unacked`: the window a plain BRPOP loses the message in.
        os.kill(os.getpid(), signal.SIGKILL)

    channel.connection._deliver = die
    with conn.Consumer(queue, callbacks=[lambda body, message: None], accept=["json"]):
        conn.drain_events(timeout=10)
    sys.exit(3)  # not reached: no message arrived
""")


def test_a_consumer_killed_with_a_message_in_flight_has_it_returned(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    body = {"features": {"year": 2021}, "request_id": "orphan-1"}
    with Connection(redis_url, transport=ReliableTransport, transport_options=OPTIONS) as conn:
        _publish(conn, body)
    proc = subprocess.run([sys.executable, "-c", DIE_IN_FLIGHT, redis_url, QUEUE], cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    inflight = [k for k in client.keys("*") if INFLIGHT_SEP.encode() in k]
    assert len(inflight) == 1 and client.llen(inflight[0]) == 1
    assert client.llen(QUEUE) == 0 and client.hlen("unacked") == 0  # only in flight
    owner = inflight[0].decode().rpartition(INFLIGHT_SEP)[2]
    # Its heartbeat key would expire after OWNER_TTL_S; expire it now (deterministic).
    assert client.delete(OWNER_PREFIX + owner) == 1
    with Connection(redis_url, transport=ReliableTransport, transport_options=OPTIONS) as conn:
        assert conn.default_channel.recover_orphaned_inflight() == 1
        assert client.llen(QUEUE) == 1
        got: list[Any] = []

        def on_message(received: Any, message: Any) -> None:
            got.append(received)
            message.ack()

        with conn.Consumer(_queue(), callbacks=[on_message], accept=["json"]):
            conn.drain_events(timeout=10)
    assert got == [body]
    assert client.llen(inflight[0]) == 0 and client.hlen("unacked") == 0
