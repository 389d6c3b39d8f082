"""A cheap shared signal of the production generation, per model name, in Redis.

The Redis is the broker's, or on RabbitMQ the Redis result backend's
(modelstore.brokers.signal_url); with neither, the signal is off and processes converge
by polling Postgres.

Whoever learns of a promote (a node's main process handling the `predq_promote`
broadcast, or a worker that promoted in `predq.store_model`) raises the key; every
serving process peeks at it before a batch, at most every SIGNAL_POLL_S, and wakes its
refresher when the value is ahead of what it serves. This reaches processes a broadcast
cannot: prefork children, and nodes whose control connection missed the message.
Postgres stays the truth; the signal only says "look now".
"""

from __future__ import annotations

import logging
import time

import redis

from modelstore.defaults import SIGNAL_POLL_S

log = logging.getLogger(__name__)

KEY_PREFIX = "predq:generation:"
CONNECT_TIMEOUT_S = 1.0


class GenerationSignal:
    """One per serving process; a no-op without a Redis URL."""

    def __init__(self, url: str | None) -> None:
        self._client: redis.Redis | None = None
        if url is not None and url.startswith(("redis://", "rediss://")):
            self._client = redis.Redis.from_url(
                url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=CONNECT_TIMEOUT_S)
        self._seen: dict[str, tuple[float, int | None]] = {}

    def raise_to(self, model: str, generation: int) -> None:
        """Record that `model` is at least at `generation` (never lowers it)."""
        if self._client is None:
            return
        try:
            # GET+SET is not atomic, but generations only grow and a stale write is
            # corrected by the next promote; Postgres stays the truth either way.
            current = self._client.get(KEY_PREFIX + model)
            if current is None or int(current) < generation:
                self._client.set(KEY_PREFIX + model, generation)
        except (redis.RedisError, ValueError) as exc:
            log.warning("could not raise the generation signal of %r: %s", model, exc)

    def peek(self, model: str) -> int | None:
        """The signalled generation, read at most every SIGNAL_POLL_S per model."""
        if self._client is None:
            return None
        now = time.monotonic()
        last = self._seen.get(model)
        if last is not None and now - last[0] < SIGNAL_POLL_S:
            return last[1]
        try:
            raw = self._client.get(KEY_PREFIX + model)
            value = int(raw) if raw is not None else None
        except (redis.RedisError, ValueError):
            value = None  # the periodic Postgres poll still converges
        self._seen[model] = (now, value)
        return value

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
