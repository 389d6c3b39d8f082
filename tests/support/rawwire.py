"""Hand-made task messages: raw JSON text published straight onto the predq queue, the way
a client that bypasses Celery (and Python's own recursion limit) can send it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from celery import Celery

from modelstore.defaults import DEAD_LETTER_QUEUE, DEFAULT_QUEUE


def deep_list(depth: int) -> str:
    """JSON text of a list nested `depth` levels deep: `[[[...]]]`."""
    return "[" * depth + "]" * depth


def task_body(kwargs_json: str, args_json: str = "[]") -> bytes:
    """A protocol-2 body `[args, kwargs, embed]` from already-encoded JSON parts."""
    embed = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'
    return f"[{args_json}, {kwargs_json}, {embed}]".encode()


def features_with(features: Mapping[str, Any], name: str, raw_value: str) -> str:
    """JSON text of `features` whose `name` is replaced by the raw JSON `raw_value`."""
    rest = {k: v for k, v in features.items() if k != name}
    text = json.dumps(rest)
    return "{" + f'"{name}": {raw_value}' + (", " + text[1:] if rest else "}")


def publish(app: Celery, task: str, task_id: str, body: bytes,
            headers: Mapping[str, Any] | None = None, content_type: str = "application/json",
            content_encoding: str = "utf-8") -> None:
    """Publish `body` as is onto the predq queue with protocol-2 headers."""
    base: dict[str, Any] = {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
                            "parent_id": None, "group": None, "retries": 0,
                            "argsrepr": "()", "kwargsrepr": "{...}"}
    base.update(headers or {})
    with app.connection_for_write() as conn:
        conn.Producer().publish(body, serializer=None, content_type=content_type,
                                content_encoding=content_encoding,
                                routing_key=DEFAULT_QUEUE, headers=base, retry=True)


def parked(redis_client: Any) -> list[dict[str, Any]]:
    """The Redis dead-letter list's entries, newest first."""
    return [json.loads(raw) for raw in redis_client.lrange(DEAD_LETTER_QUEUE, 0, -1)]
