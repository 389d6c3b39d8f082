"""A crash-safe fetch for kombu's Redis transport.

kombu pops a message with BRPOP and only then records it in its `unacked` hash: a worker
SIGKILLed between the two loses that message for good (seen here: 1 of 2,000 tasks in
about one kill out of four). This transport fetches with BLMOVE into a per-consumer
in-flight list, records the message in `unacked` as usual, then drops it from the
in-flight list. A consumer that dies in between leaves the message in its in-flight list;
any live consumer's periodic sweep moves in-flight lists whose owner stopped
heart-beating back to their queue. The worst case is a message delivered twice, which
predq's request_id dedup absorbs (invariant 3).

Used by the worker app when the broker is Redis and the consumer reads one queue with a
single priority level (predq's configuration); otherwise it behaves exactly like kombu's.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from time import monotonic, time
from typing import Any

from kombu.transport import redis as kredis
from kombu.transport import virtual as kvirtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps

from modelstore.errors import EnvelopeRejected
from workers import deadletter

INFLIGHT_SEP = ":inflight:"
INFLIGHT_REGISTRY = "predq:inflight-lists"
OWNER_PREFIX = "predq:inflight-owner:"
OWNER_TTL_S = 20
"""A consumer silent this long is dead; its in-flight list goes back to the queue."""
BEAT_EVERY_S = 2.0


class ReliableQoS(kredis.QoS):
    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> Any:
        # Also runs while the consumer is saturated and not polling: keep the beat alive.
        self.channel.beat()
        self.channel.recover_orphaned_inflight()
        return super().restore_visible(start, num, interval)

    def append(self, message: Any, delivery_tag: str) -> None:
        """kombu's record in `unacked`, reusing the JSON text the message arrived as.

        kombu re-encodes the whole message for this record: for a 1,000-row task that was
        a tenth of the worker's time. The text is the same document, so restore_by_tag
        and restore_visible read it back unchanged.
        """
        text = self.channel.arrived_as(message._raw)
        if text is None:
            super().append(message, delivery_tag)
            return
        delivery = message.delivery_info
        record = f"[{text}, {dumps(delivery['exchange'])}, {dumps(delivery['routing_key'])}]"
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time()}) \
                .hset(self.unacked_key, delivery_tag, record).execute()
        kvirtual.QoS.append(self, message, delivery_tag)


class ReliableChannel(kredis.Channel):
    QoS = ReliableQoS
    Message = deadletter.GuardedMessage  # refuses, instead of raising in the event loop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._process = f"{socket.gethostname()}:{os.getpid()}:"
        self._owner = f"{self._process}{uuid.uuid4().hex[:8]}"
        self._moving: str | None = None
        self._last_beat = 0.0
        self._side: Any = None
        self._arrived: tuple[Any, str] | None = None

    def _reliable_source(self) -> str | None:
        if self.global_keyprefix or list(self.priority_steps) != [0]:
            return None
        queues = list(self.active_queues)
        return queues[0] if len(queues) == 1 else None

    def _inflight_key(self, source: str) -> str:
        return f"{source}{INFLIGHT_SEP}{self._owner}"

    def beat(self) -> None:
        source = self._reliable_source()
        if source is not None:
            self._beat(source)

    def _beat(self, source: str) -> None:
        if monotonic() - self._last_beat < BEAT_EVERY_S:
            return
        first = self._last_beat == 0.0
        self._last_beat = monotonic()
        with self.conn_or_acquire() as client:
            client.set(OWNER_PREFIX + self._owner, "1", ex=OWNER_TTL_S)
            client.sadd(INFLIGHT_REGISTRY, self._inflight_key(source))
        if first:
            # A new channel in this process means the previous one died with its
            # connection (a Redis restart): what it had in flight is ours to return now.
            self.recover_orphaned_inflight(predecessors=self._process)

    def _brpop_start(self, timeout: Any = None) -> Any:
        source = self._reliable_source()
        if source is None:
            return super()._brpop_start(timeout)
        if timeout is None:
            timeout = self.brpop_timeout
        self._beat(source)
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
        payload, refused = deadletter.decode_envelope(text)
        if refused is not None:
            # Raised here, it would end the consumer and come back from the in-flight
            # list for the next one: park it (issue 19).
            deadletter.park_envelope(self.side_client(), source, text, refused, None)
            self.side_client().ltrim(inflight, 1, -1)
            return
        self._arrived = (payload, text)
        try:
            # Records the message in `unacked` before handing it to the consumer.
            self.connection._deliver(payload, source)
        except EnvelopeRejected as exc:  # kombu built no message: nothing recorded or run
            deadletter.park_envelope(self.side_client(), source, text, str(exc), payload)
        except BaseException:
            with self.conn_or_acquire() as client:
                client.pipeline().lrem(inflight, 1, item).rpush(source, item).execute()
            raise
        finally:
            self._arrived = None
        # BLMOVE pushed it at the head and only this consumer's loop pushes here: drop the
        # head instead of sending the whole message back for an LREM. Anything else left
        # in the list was delivered (so recorded in `unacked`) already.
        self.side_client().ltrim(inflight, 1, -1)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        # kombu builds a new Redis client (~200 response callbacks) per event published,
        # per ack and per bookkeeping call; one per channel serves them all (thread-safe:
        # every command takes a connection from the channel's pool).
        yield client or self.side_client()

    def arrived_as(self, payload: Any) -> str | None:
        """The JSON text of the message being delivered, if `payload` is its decoding."""
        arrived = self._arrived
        return arrived[1] if arrived is not None and arrived[0] is payload else None

    def side_client(self) -> Any:
        """One client for the in-flight bookkeeping: kombu builds a new one per call."""
        if self._side is None:
            self._side = self._create_client()
        return self._side

    def recover_orphaned_inflight(self, predecessors: str | None = None) -> int:
        """Move in-flight lists of consumers that stopped heart-beating (or, with
        `predecessors`, of this process's earlier channels) back to their queue."""
        moved = 0
        with self.conn_or_acquire() as client:
            for raw in client.smembers(INFLIGHT_REGISTRY):
                key = bytes_to_str(raw)
                source, _, owner = key.rpartition(INFLIGHT_SEP)
                earlier = (predecessors is not None and owner.startswith(predecessors)
                           and owner != self._owner)
                if not source or (not earlier and client.exists(OWNER_PREFIX + owner)):
                    continue
                while client.lmove(key, source, "RIGHT", "RIGHT") is not None:
                    moved += 1
                client.srem(INFLIGHT_REGISTRY, key)
        return moved


class ReliableTransport(kredis.Transport):
    Channel = ReliableChannel
