"""The Redis dead-letter list `predq.dead`, and the envelope checks of the Redis transport.

Format (read by `predq dead list|requeue|purge`): the list `predq.dead`
(modelstore.defaults.DEAD_LETTER_QUEUE) in the broker's database, newest first (LPUSH),
trimmed to the newest PREDQ_DEAD_LETTER_MAX entries. Each entry is a JSON object:

    {"reason": str, "parked_at": float (unix time), "queue": str,
     "task": str | null, "task_id": str | null,
     "message": str (the kombu envelope as received, JSON text; to requeue, LPUSH it
                     onto `queue`)}
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from kombu.transport.virtual import Message as VirtualMessage

from modelstore.defaults import DEAD_LETTER_MAX, DEAD_LETTER_QUEUE
from modelstore.errors import EnvelopeRejected, PayloadRejected
from workers import fastjson, metrics

log = logging.getLogger(__name__)

_ECHO_CHARS = 300
ENVELOPE_LIMITS = fastjson.ShapeLimits(max_depth=1000, max_items=10_000_000,
                                       source="the transport's envelope bound")
"""Deeper than task bodies may be: a header up to this depth decodes safely (orjson) and
is then refused by the task's guard, which can answer its task id."""
_limit = {"max": DEAD_LETTER_MAX}


def configure(max_entries: int) -> None:
    """Keep the newest `max_entries` parked messages (PREDQ_DEAD_LETTER_MAX)."""
    _limit["max"] = max_entries


def entry(reason: str, queue: str, task: str | None, task_id: str | None,
          message: str) -> bytes:
    return orjson.dumps({"reason": reason, "parked_at": time.time(), "queue": queue,
                         "task": task, "task_id": task_id, "message": message})


def park(client: Any, document: bytes) -> int | None:
    """LPUSH + LTRIM one entry; the list's new length, or None when Redis refused."""
    try:
        replies = (client.pipeline().lpush(DEAD_LETTER_QUEUE, document)
                   .ltrim(DEAD_LETTER_QUEUE, 0, _limit["max"] - 1)
                   .llen(DEAD_LETTER_QUEUE).execute())
        return int(replies[-1])
    except Exception:  # parking is best effort: the message is refused anyway
        log.exception("could not park a poison message in %s", DEAD_LETTER_QUEUE)
        return None


def echo(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _ECHO_CHARS else text[:_ECHO_CHARS - 1] + "…"


# --- the Redis transport's envelope ------------------------------------------------------

def decode_envelope(text: str) -> tuple[Any, str | None]:
    """(payload, None), or (None, why the envelope is refused before kombu reads it).

    kombu decodes the envelope with the stdlib decoder (RecursionError on a deep header)
    outside any handler of Celery's: an error there ended the consumer, and the message
    came back from the in-flight list for the next one. Bounded (ENVELOPE_LIMITS) first;
    the task-body limits apply to the body inside, later.
    """
    try:
        return fastjson.decode(text, ENVELOPE_LIMITS), None
    except PayloadRejected as exc:
        return None, f"undecodable envelope: {exc}"
    except Exception as exc:  # noqa: BLE001 - any decoder failure refuses the envelope
        return None, f"undecodable envelope: {echo(exc)}"


class GuardedMessage(VirtualMessage):
    """kombu's Message, raising EnvelopeRejected for an envelope it cannot build into a
    message the QoS can record (no properties or delivery tag, bad base64...)."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        try:
            super().__init__(payload, channel=channel, **kwargs)
            delivery = self.delivery_info
            if not isinstance(delivery, dict) or not {
                    "exchange", "routing_key"} <= delivery.keys():
                raise KeyError("properties.delivery_info: needs exchange and routing_key")
            if not isinstance(self.headers, dict):
                raise TypeError("headers: expected an object")
        except Exception as exc:
            raise EnvelopeRejected(f"malformed envelope: {echo(exc)}") from exc


def park_envelope(client: Any, queue: str, text: str, reason: str, payload: Any) -> None:
    """Park an envelope kombu cannot deliver; log and count it."""
    headers = payload.get("headers") if isinstance(payload, dict) else None
    headers = headers if isinstance(headers, dict) else {}
    task, task_id = (value if isinstance(value, str) else None
                     for value in (headers.get("task"), headers.get("id")))
    depth = park(client, entry(reason, queue, task, task_id, text))
    log.error("poison message %s[%s] on %s (envelope), %s: %s", task, task_id, queue,
              f"parked in {DEAD_LETTER_QUEUE}" if depth is not None else "dropped", reason)
    metrics.observe_poison("envelope", depth)
