"""RabbitMQ specifics of the worker: the dead-letter exchange and queue exist before work.

RabbitMQ drops a message dead-lettered to an exchange that does not exist, so every
worker declares `predq.dead` (idempotent) each time its consumer connects.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from kombu import Exchange, Queue

from modelstore import brokers, defaults

log = logging.getLogger(__name__)


def dead_queue(queue_type: str) -> Queue:
    """The parking queue bound to its own direct exchange, as the task queue's DLX."""
    exchange = Exchange(defaults.DEAD_QUEUE, "direct", durable=True)
    return Queue(defaults.DEAD_QUEUE, exchange, routing_key=defaults.DEAD_QUEUE, durable=True,
                 queue_arguments=brokers.dead_queue_arguments(queue_type))


class DeclareDeadLetter(bootsteps.StartStopStep):
    """A consumer step: declare the dead-letter queue on every (re)connect."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, c: Any) -> None:
        queue_type = str(c.app.conf.task_default_queue_type or "classic")
        channel = c.connection.channel()
        try:
            dead_queue(queue_type)(channel).declare()
        finally:
            channel.close()
        log.info("dead-letter queue %s declared (%s)", defaults.DEAD_QUEUE, queue_type)


def install(app: Any) -> None:
    app.steps["consumer"].add(DeclareDeadLetter)
