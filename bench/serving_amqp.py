"""The serving benchmark on RabbitMQ: `python -m bench.serving_bench --broker amqp://...`.

A fresh virtual host per run (deleted at the end) with Redis (the bench's database) as
the result backend. AMQP reports a queue's ready messages but not its unacknowledged ones
(that needs the management plugin), so "idle" means nothing ready: a fire-and-forget
no-op run may stop its clock while the last prefetch window (at most one message per
worker thread, each a no-op) is still being acknowledged. That favours the baseline,
never predq. Single-row predict runs stop the clock on rows in Postgres, so they are exact.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from urllib.parse import quote, urlsplit, urlunsplit

from kombu import Connection

from bench.serving_load import QUEUE, RESULT_TIMEOUT_S, wait_idle


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=60, check=True).stdout


@contextmanager
def fresh_vhost(server_url: str) -> Iterator[str]:
    """`server_url` with a new virtual host of its own, deleted afterwards."""
    vhost = f"predq_bench_{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        parts = urlsplit(server_url)
        yield urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
    finally:
        rabbitmqctl("delete_vhost", vhost)


def rabbitmq_pid() -> int:
    """The local RabbitMQ node's OS process, for the CPU meter."""
    return int(rabbitmqctl("eval", "list_to_integer(os:getpid()).").strip())


class AmqpBroker:
    """The same read-only view as bench.serving_load.Broker, over AMQP."""

    def __init__(self, url: str) -> None:
        self.conn = Connection(url)

    def pending(self, queue: str = QUEUE) -> int:
        """Messages ready on the queue (delivered, unacknowledged ones are not visible)."""
        channel = self.conn.default_channel
        return int(channel.queue_declare(queue, passive=True).message_count)

    def locate(self, task_ids: Sequence[str], queue: str = QUEUE) -> dict[str, list[str]]:
        return {"not locatable on AMQP": list(task_ids)} if task_ids else {}

    def wait_idle(self, queue: str = QUEUE, timeout: float = RESULT_TIMEOUT_S) -> float:
        return wait_idle(self.pending, queue, timeout)


def bench_broker(url: str) -> AbstractContextManager[str]:
    """The broker URL a run uses: RabbitMQ in a fresh vhost, anything else as given."""
    return fresh_vhost(url) if url.startswith("amqp") else nullcontext(url)
