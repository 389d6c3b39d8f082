"""Who holds each delivered Redis message until its ack, and the proof that they are alive.

kombu's Redis transport keeps a delivered, unacknowledged message in its `unacked` hash and
gives it back only when the visibility timeout (predq: an hour) expires. predq records the
consumer that holds it as well (OWNERS_KEY: delivery tag -> owner), and every owner renews
a short-lived key (OWNER_PREFIX + owner, PREDQ_OWNER_TTL) from a thread of its own, which
task load cannot starve. Any live consumer's sweep returns the messages of owners whose key
lapsed: a SIGKILLed or cut-off worker's tasks run elsewhere within TTL + sweep interval,
and a long task whose owner keeps beating is never redelivered.

The keys here are shared by all consumers of one Redis database; the channel side lives in
workers/transport.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

from workers import metrics

log = logging.getLogger(__name__)

INFLIGHT_SEP = ":inflight:"
INFLIGHT_REGISTRY = "predq:inflight-lists"
"""Set of every consumer's fetch list (`<queue>:inflight:<owner>`)."""
OWNERS_KEY = "predq:inflight-owners"
"""Hash: delivery tag of each delivered, unacknowledged message -> the owner holding it.
Bounded by the messages all consumers hold at once (their prefetch)."""
OWNER_PREFIX = "predq:inflight-owner:"
"""One key per live owner, expiring after the owner TTL unless renewed."""

BEATS_PER_TTL = 10
"""The heartbeat renews the owner key this many times per TTL (every 2 s at 20 s)."""
FRESH_SHARE = 0.5
"""A consumer takes work only while its last beat is younger than this share of the TTL,
so its key outlives any fetch it starts by at least the other half."""

# Ack only what we still own: a message returned from a lapsed owner and now held by
# another consumer keeps its (shared) delivery tag, and the late ack must not erase the
# new holder's record. No owner recorded (kombu's own paths) acks as kombu does.
ACK_SCRIPT = """
local owner = redis.call('HGET', KEYS[3], ARGV[1])
if owner and owner ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""


def owner_key(owner: str) -> str:
    return OWNER_PREFIX + owner


def lapsed_owners(client: Any, owners: set[str]) -> set[str]:
    """The owners among `owners` whose liveness key has expired."""
    if not owners:
        return set()
    ordered = sorted(owners)
    with client.pipeline(transaction=False) as pipe:
        for owner in ordered:
            pipe.exists(owner_key(owner))
        alive = pipe.execute()
    return {owner for owner, up in zip(ordered, alive, strict=True) if not up}


class Heartbeat:
    """Renews one owner's liveness key every TTL / BEATS_PER_TTL from a daemon thread.

    The thread has its own Redis client (short socket timeouts), so neither busy task
    threads nor a blocked event loop can delay it, and a dead link fails a beat quickly
    instead of hanging it. `fresh()` says whether the key is certainly alive.
    """

    def __init__(self, owner: str, ttl_s: float, client_factory: Callable[[], Any],
                 members: Callable[[], list[str] | None]) -> None:
        """`members`: the fetch lists to keep registered, or None once the consumer is
        gone (its channel closed or collected): the thread then stops."""
        self.owner = owner
        self.ttl_s = ttl_s
        self.every_s = ttl_s / BEATS_PER_TTL
        self._client_factory: Callable[[], Any] | None = client_factory
        self._members = members
        self._client: Any = None
        self._last_ok: float | None = None
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> bool:
        """Beat once now, then keep beating in the background; True if the first beat
        reached Redis."""
        ok = self.beat()
        self._thread = threading.Thread(target=self._run, name=f"predq-beat-{self.owner}",
                                        daemon=True)
        self._thread.start()
        return ok

    def stop(self) -> None:
        self._stop.set()

    def fresh(self) -> bool:
        last = self._last_ok
        return last is not None and monotonic() - last < self.ttl_s * FRESH_SHARE

    def age(self) -> float | None:
        """Seconds since the last beat that reached Redis (None: never)."""
        return None if self._last_ok is None else monotonic() - self._last_ok

    def beat(self) -> bool:
        members = self._members()
        if members is None:
            self.stop()
            return False
        sent_at = monotonic()  # the key lives TTL from when Redis saw it, later than this
        try:
            if self._client is None and self._client_factory is not None:
                # Made once (it reconnects by itself); the factory is dropped so that the
                # thread holds no reference to the channel.
                self._client, self._client_factory = self._client_factory(), None
            with self._client.pipeline(transaction=False) as pipe:
                pipe.set(owner_key(self.owner), "1", px=int(self.ttl_s * 1000))
                for member in members:
                    pipe.sadd(INFLIGHT_REGISTRY, member)
                pipe.execute()
        except Exception:  # the beat loop's boundary, logged: retried next beat
            if not self._failing:
                log.warning("predq heartbeat of %s failed; this consumer takes no new work "
                            "until it succeeds", self.owner, exc_info=True)
            self._failing = True
            metrics.set_heartbeat_age(self.age())
            return False
        if self._failing:
            log.warning("predq heartbeat of %s restored", self.owner)
        self._failing = False
        self._last_ok = sent_at
        metrics.set_heartbeat_age(self.age())
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat()
        client, self._client = self._client, None
        if client is not None:
            client.close()
