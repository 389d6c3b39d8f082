"""Issue 18 on a real Redis, at the transport level: a delivered message stays owned by its
consumer until the ack; a lapsed owner's messages are returned by a live consumer; a live
owner's message is not returned even past the visibility timeout; a late ack from a
consumer that lost its message cannot erase the new holder's record; a consumer whose
heartbeat cannot be written takes no work."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import redis
from kombu import Connection, Consumer, Exchange, Queue

from workers import metrics
from workers.ownership import OWNERS_KEY, Heartbeat, owner_key
from workers.transport import ReliableChannel, ReliableTransport

QUEUE = "predq-ownership-test"
BODY = {"features": {"year": 2020}, "request_id": "own-1"}


def _queue() -> Queue:
    return Queue(QUEUE, Exchange(QUEUE, "direct"), QUEUE)


@contextmanager
def _consumer(url: str, got: list[Any], **options: Any) -> Iterator[tuple[Connection, Any]]:
    """A kombu connection consuming QUEUE through predq's transport (prefetch 1)."""
    options = {"visibility_timeout": 3600, "priority_steps": [0], **options}
    with ExitStack() as stack:
        conn = stack.enter_context(Connection(url, transport=ReliableTransport,
                                              transport_options=options))
        channel = conn.channel()
        stack.callback(channel.close)
        channel.basic_qos(0, 1, False)
        consumer = Consumer(channel, [_queue()], accept=["json"],
                            on_message=got.append)
        stack.enter_context(consumer)
        yield conn, channel


def _publish(url: str) -> None:
    with Connection(url) as conn, conn.Producer(serializer="json") as producer:
        producer.publish(BODY, exchange=_queue().exchange, routing_key=QUEUE,
                         declare=[_queue()])


def _drain(conn: Connection, got: list[Any], count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        with suppress(TimeoutError):
            conn.drain_events(timeout=0.5)
    assert len(got) >= count, f"received {len(got)} of {count} messages"


def _returned() -> float:
    registry = metrics.get_metrics().registry
    value = registry.get_sample_value("predq_broker_returned_messages_total",
                                      {"reason": "owner_lapsed"})
    return value or 0.0


def _owner(client: redis.Redis, message: Any) -> str | None:
    raw = client.hget(OWNERS_KEY, message.delivery_tag)
    return None if raw is None else raw.decode()


def test_delivered_message_is_owned_until_acked(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    _publish(redis_url)
    got: list[Any] = []
    with _consumer(redis_url, got) as (conn, channel):
        _drain(conn, got, 1)
        assert _owner(client, got[0]) == channel.owner
        assert client.exists(owner_key(channel.owner))
        got[0].ack()
        assert _owner(client, got[0]) is None
        assert client.hlen("unacked") == 0


def test_lapsed_owner_messages_are_returned_and_late_ack_is_harmless(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    _publish(redis_url)
    dead: list[Any] = []
    alive: list[Any] = []
    with _consumer(redis_url, dead, owner_ttl=1) as (dead_conn, dead_channel):
        _drain(dead_conn, dead, 1)
        dead_channel._heartbeat.stop()  # the worker froze or lost its link
        time.sleep(1.5)
        assert not client.exists(owner_key(dead_channel.owner))
        with _consumer(redis_url, alive) as (conn, channel):
            before = _returned()
            # The sweep of a live consumer (run each unacked_restore_interval).
            channel.qos.restore_visible(interval=1)
            assert _returned() == before + 1
            _drain(conn, alive, 1)
            assert alive[0].payload == BODY
            assert _owner(client, alive[0]) == channel.owner
            # The silent worker comes back and acks its (long since returned) copy.
            dead[0].ack()
            assert _owner(client, alive[0]) == channel.owner
            assert client.hexists("unacked", alive[0].delivery_tag)
            alive[0].ack()
    assert client.hlen("unacked") == 0
    assert client.hlen(OWNERS_KEY) == 0
    assert client.llen(QUEUE) == 0


def test_live_owner_keeps_its_message_past_the_visibility_timeout(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    _publish(redis_url)
    slow: list[Any] = []
    other: list[Any] = []
    with _consumer(redis_url, slow, visibility_timeout=1, owner_ttl=2) as (conn, channel):
        _drain(conn, slow, 1)
        with _consumer(redis_url, other, visibility_timeout=1) as (_, sweeper):
            # 4 s: twice the owner TTL, four visibility timeouts. The owner's own loop does
            # nothing meanwhile (a task holding it): only its heartbeat thread speaks for it.
            for _ in range(4):
                time.sleep(1)
                sweeper.qos.restore_visible(interval=1)
        assert client.llen(QUEUE) == 0, "a live owner's message went back to the queue"
        assert _owner(client, slow[0]) == channel.owner
        slow[0].ack()
    assert client.hlen("unacked") == 0


def test_visibility_timeout_still_returns_unowned_messages(redis_url: str) -> None:
    """The last resort: a record in `unacked` with no owner (kombu's own paths)."""
    client = redis.Redis.from_url(redis_url)
    _publish(redis_url)
    got: list[Any] = []
    with _consumer(redis_url, got, visibility_timeout=1) as (conn, channel):
        _drain(conn, got, 1)
        client.hdel(OWNERS_KEY, got[0].delivery_tag)
        time.sleep(1.2)
        channel.qos.restore_visible(interval=1)
        assert client.llen(QUEUE) == 1
        got[0].ack()  # a late ack of a returned, unheld message: nothing to erase
        assert client.llen(QUEUE) == 1


def test_consumer_without_a_heartbeat_takes_no_work(redis_url: str) -> None:
    _publish(redis_url)
    got: list[Any] = []
    with _consumer(redis_url, got) as (conn, channel):
        assert isinstance(channel, ReliableChannel)
        assert channel.qos.can_consume()
        beat = channel._heartbeat
        beat.stop()
        beat._last_ok = time.monotonic() - beat.ttl_s  # no beat reached Redis for a TTL
        assert not channel.qos.can_consume()
        time.sleep(1.5)
        for _ in range(3):
            with suppress(TimeoutError):
                conn.drain_events(timeout=0.3)
        assert got == []
    assert redis.Redis.from_url(redis_url).llen(QUEUE) == 1


def test_heartbeat_that_cannot_reach_redis_is_not_fresh() -> None:
    def unreachable() -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)

    beat = Heartbeat("nobody", 20.0, unreachable, list)
    assert not beat.beat()
    assert not beat.fresh()
