"""The dead-letter queue `predq.dead`: list, requeue and purge parked messages.

- RabbitMQ: the task queue (a quorum queue) dead-letters a message delivered more than
  PREDQ_DELIVERY_LIMIT times to the queue `predq.dead`.
- Redis: workers park a poison message by LPUSHing to the list `predq.dead` a JSON object
  {reason, parked_at, queue, task, task_id, message}, where `message` is the raw kombu
  envelope as received; requeue pushes that envelope back onto its queue's list.

Nothing is lost on the way back: on RabbitMQ a parked message is acknowledged only after
the broker confirmed its copy on the task queue; on Redis the push and the removal are
one transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import redis
from kombu import Connection, Exchange, Queue
from kombu.exceptions import OperationalError as KombuOperationalError

from modelstore import brokers, defaults
from modelstore.engine import redact_url
from modelstore.errors import ConfigError
from modelstore.settings import Settings
from producer.errors import BrokerUnavailable, DeadLetterError

_DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue",
                  "x-first-death-reason", "x-last-death-exchange", "x-last-death-queue",
                  "x-last-death-reason", "x-delivery-count")
_KEPT_PROPERTIES = ("correlation_id", "reply_to", "expiration", "message_id")
_REDIS_RETRIES = 10


@dataclass(frozen=True)
class DeadMessage:
    """One parked message, as `predq dead list` shows it."""

    queue: str
    reason: str
    task: str | None
    task_id: str | None
    parked_at: float | None
    deliveries: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dead_letters(settings: Settings) -> AmqpDeadLetters | RedisDeadLetters:
    """The dead-letter store of the configured broker."""
    if brokers.is_amqp(settings.broker_url):
        return AmqpDeadLetters(settings)
    if brokers.is_redis(settings.broker_url) or brokers.is_sentinel(settings.broker_url):
        return RedisDeadLetters(settings)
    raise ConfigError(f"PREDQ_BROKER_URL: {redact_url(settings.broker_url)} has no dead-letter "
                      "queue; predq parks poison messages on RabbitMQ and Redis brokers")


@contextmanager
def _connection(settings: Settings) -> Iterator[Connection]:
    config = settings.celery_config()
    conn = Connection(config["broker_url"], connect_timeout=settings.connect_timeout_s,
                      transport_options=config.get("broker_transport_options") or {})
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=settings.connect_timeout_s)
        yield conn
    except (KombuOperationalError, redis.RedisError, OSError) as exc:
        raise BrokerUnavailable(f"broker {redact_url(settings.broker_url)} unreachable: "
                                f"{exc}") from exc
    finally:
        conn.release()


# -- RabbitMQ -----------------------------------------------------------------------------


def amqp_dead_queue(queue_type: str) -> Queue:
    """The parking queue bound to its own direct exchange (the task queue's DLX); declared
    with the same arguments as the workers declare it."""
    exchange = Exchange(defaults.DEAD_QUEUE, "direct", durable=True)
    return Queue(defaults.DEAD_QUEUE, exchange, routing_key=defaults.DEAD_QUEUE, durable=True,
                 queue_arguments=brokers.dead_queue_arguments(queue_type))


def _amqp_describe(message: Any) -> DeadMessage:
    headers = message.headers or {}
    deaths = headers.get("x-death") or [{}]
    first = deaths[0] if isinstance(deaths, list) and deaths else {}
    parked: Any = first.get("time")
    return DeadMessage(
        queue=str(headers.get("x-first-death-queue") or first.get("queue") or "?"),
        reason=str(headers.get("x-first-death-reason") or first.get("reason") or "?"),
        task=headers.get("task"), task_id=headers.get("id"),
        parked_at=parked.timestamp() if hasattr(parked, "timestamp") else None,
        deliveries=headers.get("x-delivery-count"))


class AmqpDeadLetters:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @contextmanager
    def _channel(self) -> Iterator[Any]:
        with _connection(self.settings) as conn:
            channel = conn.channel()
            try:
                amqp_dead_queue(self.settings.queue_type)(channel).declare()
                yield channel
            finally:
                channel.close()  # whatever was fetched and not acked goes back, in order

    def list(self, limit: int) -> list[DeadMessage]:
        out: list[DeadMessage] = []
        with self._channel() as channel:
            while len(out) < limit:
                message = self._get(channel)
                if message is None:
                    break
                out.append(_amqp_describe(message))
        return out

    def requeue(self, limit: int) -> int:
        moved = 0
        with self._channel() as channel:
            while moved < limit:
                message = self._get(channel)
                if message is None:
                    break
                self._republish(channel, message)
                message.ack()  # only after the broker confirmed the copy
                moved += 1
        return moved

    @staticmethod
    def _get(channel: Any) -> Any:
        raw = channel.basic_get(defaults.DEAD_QUEUE, no_ack=False)
        return None if raw is None else channel.message_to_python(raw)

    def _republish(self, channel: Any, message: Any) -> None:
        described = _amqp_describe(message)
        queue = described.queue if described.queue != "?" else defaults.DEFAULT_QUEUE
        headers = {k: v for k, v in (message.headers or {}).items() if k not in _DEATH_HEADERS}
        properties = {k: message.properties[k] for k in _KEPT_PROPERTIES
                      if message.properties.get(k) is not None}
        # The default exchange routes by queue name; a new message starts a new count.
        channel.basic_publish(
            channel.prepare_message(message.body, priority=message.properties.get("priority"),
                                    content_type=message.content_type,
                                    content_encoding=message.content_encoding,
                                    headers=headers,
                                    properties={"delivery_mode": 2, **properties}),
            exchange="", routing_key=queue)

    def purge(self) -> int:
        with self._channel() as channel:
            return int(channel.queue_purge(defaults.DEAD_QUEUE) or 0)


# -- Redis --------------------------------------------------------------------------------


def _redis_describe(raw: bytes | str) -> DeadMessage:
    try:
        entry = json.loads(raw)
        return DeadMessage(queue=str(entry.get("queue")), reason=str(entry.get("reason")),
                           task=entry.get("task"), task_id=entry.get("task_id"),
                           parked_at=entry.get("parked_at"))
    except (ValueError, AttributeError):
        return DeadMessage(queue="?", reason=f"unreadable entry: {raw[:60]!r}", task=None,
                           task_id=None, parked_at=None)


def _redis_target(raw: bytes | str) -> tuple[str, str] | None:
    """(queue, envelope) of a well-formed entry, else None."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    queue, message = entry.get("queue"), entry.get("message")
    if not isinstance(queue, str) or not queue or not isinstance(message, str):
        return None
    return queue, message


class RedisDeadLetters:
    """The newest entry is at the head of the list (LPUSH); requeue takes the oldest."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @contextmanager
    def _client(self) -> Iterator[redis.Redis]:
        with _connection(self.settings) as conn:
            try:
                yield conn.default_channel.client  # type: ignore[attr-defined]
            except redis.RedisError as exc:
                raise BrokerUnavailable(f"broker {redact_url(self.settings.broker_url)}: "
                                        f"{exc}") from exc

    def list(self, limit: int) -> list[DeadMessage]:
        with self._client() as client:
            return [_redis_describe(raw) for raw in client.lrange(defaults.DEAD_QUEUE, 0,
                                                                  limit - 1)]

    def requeue(self, limit: int) -> int:
        moved = 0
        with self._client() as client:
            try:
                while moved < limit and self._requeue_oldest(client):
                    moved += 1
            except DeadLetterError as exc:
                raise DeadLetterError(f"requeued {moved} message(s), then stopped: {exc}"
                                      ) from exc
        return moved

    def _requeue_oldest(self, client: redis.Redis) -> bool:
        """Move the oldest entry's envelope back to its queue, atomically (WATCH/MULTI)."""
        for _ in range(_REDIS_RETRIES):
            with client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(defaults.DEAD_QUEUE)
                    raw = pipe.lindex(defaults.DEAD_QUEUE, -1)
                    if raw is None:
                        return False
                    target = _redis_target(raw)
                    if target is None:
                        raise DeadLetterError(
                            f"{defaults.DEAD_QUEUE}: the oldest entry is not a parked message "
                            f"({raw[:60]!r}); inspect it with `predq dead list`, or purge")
                    pipe.multi()
                    pipe.lpush(target[0], target[1])
                    pipe.rpop(defaults.DEAD_QUEUE)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    time.sleep(0.01)  # someone else changed the list: look again
        raise DeadLetterError(f"{defaults.DEAD_QUEUE}: the list kept changing; try again")

    def purge(self) -> int:
        with self._client() as client, client.pipeline(transaction=True) as pipe:
            pipe.llen(defaults.DEAD_QUEUE)
            pipe.delete(defaults.DEAD_QUEUE)
            count, _ = pipe.execute()
        return int(count)
