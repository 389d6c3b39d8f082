"""Which broker a URL names, what predq refuses, and the Celery settings each broker needs.

Plain data only (the store imports nothing of Celery's): the queue is declared from a dict
Celery turns into a kombu Queue, identically by workers and producers, because RabbitMQ
refuses a re-declaration with different arguments (PRECONDITION_FAILED).
"""

from __future__ import annotations

from typing import Any

from modelstore import defaults
from modelstore.errors import ConfigError

AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")
REDIS_SCHEMES = ("redis://", "rediss://")
SENTINEL_SCHEMES = ("sentinel://", "sentinels://")
QUEUE_TYPES = ("quorum", "classic")


def is_amqp(url: str) -> bool:
    return url.startswith(AMQP_SCHEMES)


def is_redis(url: str) -> bool:
    return url.startswith(REDIS_SCHEMES)


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEMES)


def check_urls(broker_url: str, result_backend: str, backend_was_set: bool,
               sentinel_master: str | None) -> None:
    """ConfigError naming the variable for a combination predq cannot run on."""
    for name, url in (("PREDQ_BROKER_URL", broker_url), ("PREDQ_RESULT_BACKEND", result_backend)):
        if url.startswith(("redis+cluster://", "rediss+cluster://")):
            raise ConfigError(f"{name}: Redis Cluster is not supported (Celery and kombu cannot "
                              "use it); use one Redis, Redis Sentinel (sentinel://host:26379;"
                              "sentinel://host2:26379 with PREDQ_SENTINEL_MASTER) or RabbitMQ")
        if is_sentinel(url) and not sentinel_master:
            raise ConfigError(f"{name}: a sentinel:// URL needs PREDQ_SENTINEL_MASTER, the name "
                              "of the Redis master the sentinels watch (e.g. mymaster)")
    if is_amqp(broker_url) and not backend_was_set:
        raise ConfigError("PREDQ_RESULT_BACKEND: the broker is AMQP, which stores no results; "
                          "set a result backend: redis://host:6379/1 or "
                          "db+postgresql://user:password@host/db")
    if is_amqp(result_backend):
        raise ConfigError("PREDQ_RESULT_BACKEND: AMQP is not a result backend (Celery 5 dropped "
                          "it); use redis://... or db+postgresql://...")


def queue_arguments(queue_type: str, delivery_limit: int) -> dict[str, Any]:
    """RabbitMQ arguments of predq's task queue. A quorum queue counts deliveries, so a
    message that keeps killing workers is dead-lettered to DEAD_QUEUE after the limit;
    a classic queue cannot count and has no limit."""
    if queue_type != "quorum":
        return {}
    return {"x-queue-type": "quorum", "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": defaults.DEAD_QUEUE,
            "x-dead-letter-routing-key": defaults.DEAD_QUEUE}


def amqp_config(queue_type: str, delivery_limit: int, confirm_publish: bool,
                heartbeat_s: int) -> dict[str, Any]:
    """Celery settings for a RabbitMQ broker. A topic exchange, so that Celery's native
    delayed delivery (used by retries with a countdown on quorum queues) can route to it."""
    queue = defaults.DEFAULT_QUEUE
    return {
        "task_default_queue_type": queue_type,
        "task_queues": {queue: {"exchange": queue, "exchange_type": "topic",
                                "routing_key": queue,
                                "queue_arguments": queue_arguments(queue_type, delivery_limit)}},
        "task_default_exchange": queue,
        "task_default_routing_key": queue,
        # Every publish waits for the broker's ack; a nack or a lost connection raises.
        "broker_transport_options": {"confirm_publish": confirm_publish},
        # Also the heartbeat RabbitMQ expects from workers: a cut-off worker's connection
        # is closed after about two missed beats and its unacked messages are requeued.
        "broker_heartbeat": heartbeat_s,
    }


def sentinel_options(master: str | None) -> dict[str, Any]:
    return {"master_name": master} if master else {}


def dead_queue_arguments(queue_type: str) -> dict[str, Any]:
    """The parking queue: the same type as the task queue, never dead-lettering itself."""
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}


def signal_url(broker_url: str, result_backend: str) -> str | None:
    """The Redis the generation signal lives in: the broker's, else the result backend's
    (RabbitMQ with a Redis backend), else none (convergence falls back to polling)."""
    for url in (broker_url, result_backend):
        if is_redis(url):
            return url
    return None


def result_backend_url(url: str) -> str:
    """Celery's database backend with the driver predq ships: SQLAlchemy 2.1 maps a bare
    postgresql:// to psycopg 3, which is not installed."""
    for bare in ("db+postgresql://", "db+postgres://"):
        if url.startswith(bare):
            return "db+postgresql+psycopg2://" + url.removeprefix(bare)
    return url
