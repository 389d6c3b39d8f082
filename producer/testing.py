"""A stand-in for the producer's Celery app, to test code that uses PredqClient without a
broker: `PredqClient(settings, app=StubApp(tasks={"predq.predict": handler}))`.

Task handlers take the kwargs (after a JSON round trip, as on the wire) and return the
result; returning an exception instance makes the task fail, and a task with no handler
never answers (the client's timeout fires). Broadcast handlers return reply lists.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError

TaskHandler = Callable[[dict[str, Any]], Any]
BroadcastHandler = Callable[[dict[str, Any]], list[dict[str, Any]]]


@dataclass
class SentTask:
    name: str
    kwargs: dict[str, Any]
    ignore_result: bool
    task_id: str


@dataclass
class SentBroadcast:
    command: str
    arguments: dict[str, Any]
    timeout: float
    limit: int | None


class StubResult:
    """The AsyncResult subset the client uses: `id` and `get()`."""

    def __init__(self, task_id: str, value: Any = None, answered: bool = True) -> None:
        self.id = task_id
        self.value = value
        self.answered = answered

    def get(self, timeout: float | None = None, interval: float = 0.5,
            propagate: bool = True) -> Any:
        if not self.answered:
            raise CeleryTimeoutError("The operation timed out.")
        if isinstance(self.value, BaseException) and propagate:
            raise self.value
        return self.value


@dataclass
class StubControl:
    app: StubApp

    def broadcast(self, command: str, arguments: dict[str, Any] | None = None,
                  reply: bool = False, timeout: float = 1.0, limit: int | None = None,
                  **_: Any) -> list[dict[str, Any]]:
        args = json.loads(json.dumps(arguments or {}))
        self.app.broadcasts_sent.append(SentBroadcast(command, args, timeout, limit))
        handler = self.app.broadcasts.get(command)
        return handler(args) if handler is not None and reply else []

    def ping(self, timeout: float = 1.0, **_: Any) -> list[dict[str, Any]]:
        return [{node: {"ok": "pong"}} for node in self.app.nodes]


@dataclass
class StubApp:
    tasks: dict[str, TaskHandler] = field(default_factory=dict)
    broadcasts: dict[str, BroadcastHandler] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    sent: list[SentTask] = field(default_factory=list)
    broadcasts_sent: list[SentBroadcast] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        self.control = StubControl(self)

    def send_task(self, name: str, kwargs: Mapping[str, Any] | None = None,
                  ignore_result: bool = False, **_: Any) -> StubResult:
        # JSON round trip: what cannot cross the wire fails here as it would in kombu.
        wire = json.loads(json.dumps(dict(kwargs or {})))
        task_id = str(uuid.uuid4())
        self.sent.append(SentTask(name, wire, ignore_result, task_id))
        handler = self.tasks.get(name)
        if handler is None:
            return StubResult(task_id, answered=False)
        return StubResult(task_id, handler(wire))

    def close(self) -> None:
        self.closed = True
