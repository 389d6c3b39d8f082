"""A crash-safe Redis transport: every message has a live owner from fetch to ack.

kombu pops a message with BRPOP, records it in its `unacked` hash, and gives back an
unacknowledged one only after the visibility timeout (predq: an hour). This transport
fetches with BLMOVE into a per-consumer in-flight list and, in one MULTI with kombu's
`unacked` record, hands the message over to an ownership record (workers/ownership.py:
delivery tag -> owner) that stays until the ack. Each owner renews a short-lived liveness
key from a heartbeat thread; every consumer's periodic sweep returns to its queue what
lapsed owners held (their in-flight list and their owned messages). So a SIGKILLed or
cut-off worker's tasks run elsewhere within PREDQ_OWNER_TTL + the sweep interval, while a
long task of a live owner is never redelivered: the visibility-timeout restore skips
messages whose owner is alive and remains only a last resort. The worst case is a message
run twice, which predq's request_id dedup absorbs (invariant 3).

A consumer whose heartbeat cannot be written takes no new work. Acks check ownership, so
a worker returning from a partition cannot erase the record of a copy held elsewhere.

Used by the worker app when the broker is Redis and the consumer reads one queue with a
single priority level (predq's configuration); otherwise it behaves exactly like kombu's.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import monotonic, time
from typing import Any

import redis
from kombu.transport import redis as kredis
from kombu.transport import virtual as kvirtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from modelstore.defaults import OWNER_TTL_S
from modelstore.errors import EnvelopeRejected
from workers import metrics, parking
from workers.ownership import (
    ACK_SCRIPT,
    INFLIGHT_REGISTRY,
    INFLIGHT_SEP,
    OWNER_PREFIX,
    OWNERS_KEY,
    Heartbeat,
    lapsed_owners,
    owner_key,
)

log = logging.getLogger(__name__)

__all__ = ["INFLIGHT_SEP", "OWNER_PREFIX", "ReliableChannel", "ReliableQoS",
           "ReliableTransport"]

_OWN = object()
"""restore_by_tag's default: only what this channel holds (or nobody holds)."""
BEAT_SOCKET_TIMEOUT_SHARE = 0.25
"""The heartbeat's Redis socket timeouts, as a share of the owner TTL."""


class ReliableQoS(kredis.QoS):
    def can_consume(self) -> bool:
        return bool(super().can_consume()) and self.channel.may_take_work()

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> Any:
        # Runs on every consumer's event loop each unacked_restore_interval: the sweep.
        channel = self.channel
        if channel.may_take_work():
            channel.recover_orphaned_inflight()
            channel.return_lapsed()
        self._restore_expired(start, num, interval)

    def _restore_expired(self, start: int, num: int, interval: int) -> None:
        """kombu's visibility-timeout restore, skipping messages whose owner is alive."""
        self._vrestore_count += 1
        if (self._vrestore_count - 1) % (interval or 1):
            return
        with self.channel.conn_or_acquire() as client:
            ceil = time() - self.visibility_timeout
            try:
                with kredis.Mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire):
                    visible = client.zrange(self.unacked_index_key, ceil, 0, desc=True,
                                            byscore=True, offset=num and start, num=num)
                    tags = [bytes_to_str(t) for t in visible or []]
                    if not tags:
                        return
                    held = dict(zip(tags, client.hmget(OWNERS_KEY, tags), strict=True))
                    owners = {bytes_to_str(o) for o in held.values() if o is not None}
                    lapsed = lapsed_owners(client, owners)
                    for tag, raw in held.items():
                        owner = None if raw is None else bytes_to_str(raw)
                        if owner is None or owner in lapsed:
                            self.restore_by_tag(tag, client, expect=owner)
                            metrics.observe_returned("visibility_timeout")
            except kredis.MutexHeld:
                pass

    def append(self, message: Any, delivery_tag: str) -> None:
        """kombu's record in `unacked` plus the ownership record, in the MULTI that drops
        the message from the in-flight list: it is always in exactly one of the two.

        The record reuses the JSON text the message arrived as: kombu re-encodes the whole
        message, a tenth of the worker's time for a 1,000-row task. The text is the same
        document, so restore_by_tag and restore_visible read it back unchanged.
        """
        arrival = self.channel.take_arrival(message._raw)
        if arrival is None:
            super().append(message, delivery_tag)
            return
        text, inflight = arrival
        delivery = message.delivery_info
        record = f"[{text}, {dumps(delivery['exchange'])}, {dumps(delivery['routing_key'])}]"
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time()}) \
                .hset(self.unacked_key, delivery_tag, record) \
                .hset(OWNERS_KEY, delivery_tag, self.channel.owner) \
                .ltrim(inflight, 1, -1).execute()
        kvirtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if self.channel.global_keyprefix:
            super().ack(delivery_tag)
            return
        if not self.channel.ack_owned(delivery_tag, self.unacked_index_key, self.unacked_key):
            log.info("late ack of %s ignored: it was returned to the queue while this "
                     "consumer was silent, and another consumer holds it", delivery_tag)
        kvirtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)
            kvirtual.QoS.ack(self, delivery_tag)
        else:
            self.ack(delivery_tag)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        return super()._remove_from_indices(delivery_tag, pipe).hdel(OWNERS_KEY, delivery_tag)

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False,
                       expect: Any = _OWN) -> None:
        """Requeue the `unacked` record of `tag` unless an owner other than `expect`
        (default: this channel) holds it now."""
        expected = self.channel.owner if expect is _OWN else expect

        def restore_transaction(pipe: Any) -> None:
            raw = pipe.hget(OWNERS_KEY, tag)
            if raw is not None and bytes_to_str(raw) != expected:
                return
            p = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            if p:
                message, exchange, routing_key = loads(bytes_to_str(p))
                self.channel._do_restore_message(message, exchange, routing_key, pipe,
                                                 leftmost)

        with self.channel.conn_or_acquire(client) as conn:
            conn.transaction(restore_transaction, self.unacked_key, OWNERS_KEY)


class ReliableChannel(kredis.Channel):
    QoS = ReliableQoS
    Message = parking.GuardedMessage  # refuses, instead of raising in the event loop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._process = f"{socket.gethostname()}:{os.getpid()}:"
        self.owner = f"{self._process}{uuid.uuid4().hex[:8]}"
        options = self.connection.client.transport_options
        self.owner_ttl_s = float(options.get("owner_ttl", OWNER_TTL_S))
        self._moving: str | None = None
        self._side: Any = None
        self._ack_script: Any = None
        self._arrived: tuple[Any, str, str] | None = None
        self._heartbeat: Heartbeat | None = None

    def _reliable_source(self) -> str | None:
        if self.global_keyprefix or list(self.priority_steps) != [0]:
            return None
        queues = list(self.active_queues)
        return queues[0] if len(queues) == 1 else None

    def _inflight_key(self, source: str) -> str:
        return f"{source}{INFLIGHT_SEP}{self.owner}"

    # -- liveness -----------------------------------------------------------------------

    def may_take_work(self) -> bool:
        """False while this consumer cannot prove (by a recent beat) that it is alive."""
        source = self._reliable_source()
        if source is None:
            return True
        beat = self._heartbeat
        if beat is None:
            beat = self._heartbeat = Heartbeat(self.owner, self.owner_ttl_s,
                                               self._beat_client, _fetch_lists(self))
            if beat.start():
                # A new channel in this process means the previous one died with its
                # connection (a Redis restart): what it had fetched is ours to return.
                self.recover_orphaned_inflight(predecessors=self._process)
        return beat.fresh()

    def _beat_client(self) -> Any:
        params = self._connparams()
        timeout = max(1.0, self.owner_ttl_s * BEAT_SOCKET_TIMEOUT_SHARE)
        params.update(socket_timeout=timeout, socket_connect_timeout=timeout,
                      max_connections=2)
        return self.Client(connection_pool=redis.ConnectionPool(**params))

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        super().close()

    # -- fetch --------------------------------------------------------------------------

    def _brpop_start(self, timeout: Any = None) -> Any:
        source = self._reliable_source()
        if source is None:
            return super()._brpop_start(timeout)
        if timeout is None:
            timeout = self.brpop_timeout
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        self._moving = source
        self.client.connection.send_command(
            "BLMOVE", source, self._inflight_key(source), "RIGHT", "LEFT", timeout or 0)
        return None

    def _brpop_read(self, **options: Any) -> Any:
        source, self._moving = self._moving, None
        if source is None:
            return super()._brpop_read(**options)
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if item is None:
                raise kredis.Empty()
            self._queue_cycle.rotate(source)
            self._deliver_moved(source, item)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _deliver_moved(self, source: str, item: bytes) -> None:
        inflight = self._inflight_key(source)
        text = item.decode("utf-8", "replace")
        payload, refused = parking.decode_envelope(text)
        if refused is not None:
            # Raised here, it would end the consumer and come back from the in-flight
            # list for the next one: park it (issue 19).
            parking.park_envelope(self.side_client(), source, text, refused, None)
            self.side_client().ltrim(inflight, 1, -1)
            return
        self._arrived = (payload, text, inflight)
        try:
            # QoS.append records it in `unacked` and moves it out of the in-flight list.
            self.connection._deliver(payload, source)
        except EnvelopeRejected as exc:  # kombu built no message: nothing recorded or run
            parking.park_envelope(self.side_client(), source, text, str(exc), payload)
        except BaseException:
            if self._arrived is not None:  # not recorded as delivered yet: put it back
                with self.conn_or_acquire() as client:
                    client.pipeline().lrem(inflight, 1, item).rpush(source, item).execute()
            raise
        finally:
            handed_over = self._arrived is None
            self._arrived = None
        if not handed_over:
            # Delivered without an ack record (e.g. no consumer: kombu requeued it). BLMOVE
            # pushed it at the head and only this consumer's loop pushes here.
            self.side_client().ltrim(inflight, 1, -1)

    def take_arrival(self, payload: Any) -> tuple[str, str] | None:
        """(JSON text, in-flight list) of the message being delivered, if `payload` is its
        decoding; the caller takes over moving it out of the in-flight list."""
        arrived = self._arrived
        if arrived is None or arrived[0] is not payload:
            return None
        self._arrived = None
        return arrived[1], arrived[2]

    # -- bookkeeping ----------------------------------------------------------------------

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        # kombu builds a new Redis client (~200 response callbacks) per event published,
        # per ack and per bookkeeping call; one per channel serves them all (thread-safe:
        # every command takes a connection from the channel's pool).
        yield client or self.side_client()

    def side_client(self) -> Any:
        """One client for the in-flight bookkeeping: kombu builds a new one per call."""
        if self._side is None:
            self._side = self._create_client()
        return self._side

    def ack_owned(self, tag: str, index_key: str, unacked_key: str) -> bool:
        """Drop `tag`'s records unless another owner holds it now; False if one does."""
        if self._ack_script is None:
            self._ack_script = self.side_client().register_script(ACK_SCRIPT)
        keys = [index_key, unacked_key, OWNERS_KEY]
        return bool(self._ack_script(keys=keys, args=[tag, self.owner]))

    def recover_orphaned_inflight(self, predecessors: str | None = None) -> int:
        """Move in-flight lists of consumers that stopped heart-beating (or, with
        `predecessors`, of this process's earlier channels) back to their queue."""
        moved = 0
        with self.conn_or_acquire() as client:
            for raw in client.smembers(INFLIGHT_REGISTRY):
                key = bytes_to_str(raw)
                source, _, owner = key.rpartition(INFLIGHT_SEP)
                earlier = (predecessors is not None and owner.startswith(predecessors)
                           and owner != self.owner)
                if not source or (not earlier and client.exists(owner_key(owner))):
                    continue
                while client.lmove(key, source, "RIGHT", "RIGHT") is not None:
                    moved += 1
                client.srem(INFLIGHT_REGISTRY, key)
        if moved:
            log.warning("returned %d fetched message(s) of silent consumers to the queue",
                        moved)
            metrics.observe_returned("owner_lapsed", moved)
        return moved

    def return_lapsed(self) -> int:
        """Requeue the delivered, unacknowledged messages of owners whose key lapsed."""
        with self.conn_or_acquire() as client:
            held = {bytes_to_str(t): bytes_to_str(o)
                    for t, o in client.hgetall(OWNERS_KEY).items()}
            lapsed = lapsed_owners(client, set(held.values()))
            tags = [tag for tag, owner in held.items() if owner in lapsed]
            for tag in tags:
                self.qos.restore_by_tag(tag, client, expect=held[tag])
        if tags:
            log.warning("returned %d unacknowledged message(s) of lapsed consumers %s to "
                        "the queue", len(tags), sorted(lapsed))
            metrics.observe_returned("owner_lapsed", len(tags))
        return len(tags)


def _fetch_lists(channel: ReliableChannel) -> Callable[[], list[str] | None]:
    """The heartbeat's view of its channel: by weak reference, so a channel dropped without
    close() stops its heartbeat (its owner then lapses, and its messages come back)."""
    ref = weakref.ref(channel)

    def members() -> list[str] | None:
        live = ref()
        if live is None or live.closed:
            return None
        source = live._reliable_source()
        return [live._inflight_key(source)] if source else []

    return members


class ReliableTransport(kredis.Transport):
    Channel = ReliableChannel
