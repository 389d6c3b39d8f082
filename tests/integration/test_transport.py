"""predq's Redis transport on a real Redis: a delivered message is recorded in kombu's
`unacked` hash (as the text it arrived as) and leaves the consumer's in-flight list; an
unacknowledged message comes back to its queue intact; an acknowledged one leaves no
trace."""

from __future__ import annotations

import json
from typing import Any

import redis
from kombu import Connection, Exchange, Queue

from workers.transport import INFLIGHT_SEP, ReliableTransport

QUEUE = "predq-transport-test"


def _connection(url: str) -> Connection:
    return Connection(url, transport=ReliableTransport,
                      transport_options={"visibility_timeout": 3600})


def _publish(conn: Connection, bodies: list[dict[str, Any]]) -> Queue:
    queue = Queue(QUEUE, Exchange(QUEUE, "direct"), QUEUE)
    with conn.Producer(serializer="json") as producer:
        for body in bodies:
            producer.publish(body, exchange=queue.exchange, routing_key=QUEUE, declare=[queue])
    return queue


def _consume(conn: Connection, queue: Queue, count: int, ack: bool) -> list[Any]:
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        if ack:
            message.ack()

    with conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
        while len(got) < count:
            conn.drain_events(timeout=5)
    return got


def test_unacked_record_is_the_arrived_message_and_restores_intact(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    rows = [{"features": {"brand": 'Škoda "q"\n', "year": 2020}, "request_id": f"r{i}"}
            for i in range(3)]
    with _connection(redis_url) as conn:
        queue = _publish(conn, rows)
        assert _consume(conn, queue, 3, ack=False) == rows
        records = client.hgetall("unacked")
        assert len(records) == 3
        for raw in records.values():
            message, exchange, routing_key = json.loads(raw)
            assert (exchange, routing_key) == (QUEUE, QUEUE)
            assert message["properties"]["delivery_tag"] in {
                k.decode() for k in records}
        inflight = [k for k in client.keys("*") if INFLIGHT_SEP.encode() in k]
        assert all(client.llen(k) == 0 for k in inflight)
        conn.default_channel.qos.restore_unacked_once()
    assert client.llen(QUEUE) == 3
    with _connection(redis_url) as conn:
        assert sorted(_consume(conn, Queue(QUEUE, Exchange(QUEUE, "direct"), QUEUE), 3,
                               ack=True), key=lambda b: b["request_id"]) == rows
    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0
    assert client.llen(QUEUE) == 0
