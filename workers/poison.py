"""Guarded dispatch: a message that cannot be decoded, validated or handed to the pool
fails alone, and the consumer stays up.

Celery runs each task message through the task's *strategy* in the worker's main process:
it builds the Request (decoding the body), then hands it to the pool (prefork pickles the
request there). An exception in either step used to reach the consumer's event loop and
end the worker ("Unrecoverable error: RecursionError ... while pickling"); with late acks
the message came back and ended the next worker too. So, at worker start:

- every task's strategy is wrapped (`Task.Strategy`, Celery's public hook);
- the consumer's message handler is wrapped too (a consumer bootstep), for what fails
  before a strategy is chosen (a task name that is not a string, a protocol-1 body...).

Such a message is:
- logged once (with its traceback, unless it is the bounded decoder's named refusal);
- answered, when it has a task id: the result is `{"error": ...}` naming the field
  (`{"request_id": null, "error": ...}` for predq.predict, `{"error": ..., "results": []}`
  for predq.predict_batch), so a waiting client gets a clear error instead of a timeout;
- parked in the Redis list `predq.dead` (format: workers/parking.py) or, on RabbitMQ,
  rejected without requeue so the queue's dead-letter exchange takes it; never
  redelivered in a loop;
- counted in `predq_poison_messages_total{reason}`: decode | invalid | dispatch (and
  envelope, for what the Redis transport parks before Celery sees it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from celery import Celery, bootsteps, states
from celery.utils.imports import symbol_by_name
from celery.worker.state import task_ready
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.transport.redis import Channel as RedisChannel

from modelstore.defaults import DEAD_LETTER_QUEUE
from modelstore.errors import PayloadRejected, render_path
from modelstore.settings import Settings
from workers import metrics, parking
from workers.fastjson import ShapeLimits

log = logging.getLogger(__name__)

STRATEGY = "workers.poison:guarded_strategy"
DEFAULT_STRATEGY = "celery.worker.strategy:default"
_limits = {"shape": ShapeLimits()}


def install(app: Celery, settings: Settings) -> None:
    """Guard this worker's message handling (call at worker start, before the consumer
    builds its task strategies)."""
    _limits["shape"] = ShapeLimits(settings.max_json_depth, settings.max_json_items)
    parking.configure(settings.dead_letter_max)
    app.steps["consumer"].add(GuardStep)
    for task in app.tasks.values():
        if task.Strategy != STRATEGY:
            task.inner_strategy = task.Strategy
            task.Strategy = STRATEGY


class GuardStep(bootsteps.StartStopStep):
    """Wraps the consumer's task-message handler, built each time the consumer starts."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        create = c.create_task_handler
        if getattr(create, "predq_guarded", False):
            return

        def create_task_handler(*args: Any, **kw: Any) -> Callable[[Any], Any]:
            return guarded_receiver(create(*args, **kw), c)
        create_task_handler.predq_guarded = True  # type: ignore[attr-defined]
        c.create_task_handler = create_task_handler


def guarded_receiver(on_task_received: Callable[[Any], Any], consumer: Any
                     ) -> Callable[[Any], Any]:
    def receive(message: Any) -> Any:
        try:
            return on_task_received(message)
        except Exception as exc:  # noqa: BLE001 - one message's boundary; refuse() logs it
            refuse(None, consumer, message, exc, dispatched=False)
            return None
    return receive


def guarded_strategy(task: Any, app: Celery, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
    """Celery's strategy for `task`, wrapped so one message can only fail alone."""
    inner = symbol_by_name(getattr(task, "inner_strategy", DEFAULT_STRATEGY))(
        task, app, consumer, **kwargs)

    def handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any,
                **extra: Any) -> Any:
        seen: list[Any] = []  # the Request, once Celery built it (just before dispatch)
        semaphore = getattr(consumer.controller, "semaphore", None)
        slots = getattr(semaphore, "value", None)

        def inspect(request: Any) -> None:
            seen.append(request)
            check_arguments(request)

        try:
            problem = envelope_problem(message)
            if problem is not None:
                raise PayloadRejected(*problem)
            return inner(message, body, ack, reject, [*(callbacks or ()), inspect], **extra)
        except Exception as exc:  # noqa: BLE001 - one message's boundary; refuse() logs it
            request = seen[0] if seen else None
            if request is not None:
                _undo_dispatch(consumer, request, semaphore, slots)
            refuse(task, consumer, message, exc, dispatched=request is not None)
            return None
    return handler


def check_arguments(request: Any) -> None:
    """Celery checks args/kwargs only in the pool, "outside the task body": it then logs a
    warning and stores no result, so the client waits forever. Refuse them here."""
    args, kwargs = request.args, request.kwargs
    if not isinstance(args, list | tuple):
        raise PayloadRejected((0,), f"expected an array of positional arguments, got "
                              f"{_json_type(args)}")
    if not isinstance(kwargs, dict):
        raise PayloadRejected((1,), f"expected an object of keyword arguments, got "
                              f"{_json_type(kwargs)}")
    payload = getattr(request, "_payload", None)  # (args, kwargs, embed), decoded
    embed = payload[2] if isinstance(payload, list | tuple) and len(payload) == 3 else None
    if embed is not None and not isinstance(embed, dict):
        raise PayloadRejected((2,), f"expected an object, got {_json_type(embed)}")


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


Problem = tuple[tuple[str | int, ...], str]


def envelope_problem(message: Any) -> Problem | None:
    """(field, problem) of headers Celery would choke on. Headers and properties are
    pickled to prefork children too: bounded like bodies."""
    headers, properties = message.headers, message.properties
    if not isinstance(headers, dict) or not isinstance(properties, dict):
        return ("headers",), "headers and properties must be JSON objects"
    limit = _limits["shape"].max_depth
    if _too_deep(headers, limit) or _too_deep(properties, limit):
        return ("headers",), f"nested more than {limit} levels deep"
    return _header_problem(headers)


_ID_CHARS = 255


def _header_problem(headers: dict[str, Any]) -> Problem | None:
    """Header values Celery uses unchecked (a non-string task id left the message unacked
    forever: the result key could not be built)."""
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id or len(task_id) > _ID_CHARS:
        return ("headers", "id"), f"expected a task id string of 1..{_ID_CHARS} characters"
    for name in ("root_id", "parent_id", "group", "shadow"):
        value = headers.get(name)
        if value is not None and not isinstance(value, str):
            return ("headers", name), f"expected a string or null, got {_json_type(value)}"
    retries = headers.get("retries")
    if retries is not None and (type(retries) is not int or not 0 <= retries < 2**31):
        return ("headers", "retries"), "expected a non-negative integer"
    limits = headers.get("timelimit")
    if limits is not None and not (
            isinstance(limits, list | tuple) and len(limits) == 2 and all(
                v is None or (type(v) in (int, float) and 0 <= v < 2**31) for v in limits)):
        return ("headers", "timelimit"), "expected [hard, soft] seconds (numbers or null)"
    return None


def _too_deep(value: object, max_depth: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return True
        for child in item.values() if type(item) is dict else item:
            if type(child) in _CONTAINERS:
                stack.append((child, depth + 1))
    return False


_CONTAINERS = frozenset({dict, list, tuple})


def _undo_dispatch(consumer: Any, request: Any, semaphore: Any, slots: int | None) -> None:
    """Forget a request whose hand-over to the pool failed: Celery's reserved set, the
    pool's result entry (billiard registers it before pickling) and the pool slot."""
    task_ready(request)
    pool = getattr(getattr(consumer, "pool", None), "_pool", None)
    cache = getattr(pool, "_cache", None)
    if isinstance(cache, dict):
        for job, result in list(cache.items()):
            if getattr(result, "correlation_id", None) == request.id:
                cache.pop(job, None)
    if semaphore is not None and slots is not None and semaphore.value < slots:
        semaphore.release()  # acquired for this request, which never reached a process


def refuse(task: Any, consumer: Any, message: Any, exc: BaseException,
           dispatched: bool) -> None:
    """Log, answer, park or dead-letter, reject and count one poison message."""
    cause = _cause(exc)
    kind = _kind(cause, dispatched)
    headers = message.headers if isinstance(message.headers, dict) else {}
    task_id = headers.get("id") if isinstance(headers.get("id"), str) else None
    name = headers.get("task") if isinstance(headers.get("task"), str) else None
    reason = describe(cause, kind)
    depth = park(message, reason, name, task_id)
    where = f"parked in {DEAD_LETTER_QUEUE}" if depth is not None else "rejected"
    log.error("poison message %s[%s] (%s), %s: %s", name, task_id, kind, where, reason,
              exc_info=None if isinstance(cause, PayloadRejected) else cause)
    if task_id is not None and not headers.get("ignore_result"):
        answer(task or consumer.app.tasks.get(name), consumer.app, task_id, reason)
    if not message.acknowledged:
        message.reject_log_error(log, consumer.connection_errors, requeue=False)
    metrics.observe_poison(kind, depth)


def _cause(exc: BaseException) -> BaseException:
    """kombu wraps a decoder's error in DecodeError(original): report the original."""
    if isinstance(exc, DecodeError) and exc.args and isinstance(exc.args[0], BaseException):
        return exc.args[0]
    return exc


def _kind(cause: BaseException, dispatched: bool) -> str:
    if isinstance(cause, PayloadRejected):
        return "decode"
    if dispatched:
        return "dispatch"
    if isinstance(cause, ValueError | ContentDisallowed | DecodeError):
        return "decode"
    return "invalid"


_STAGES = {"decode": "Can't decode message body", "invalid": "invalid task message",
           "dispatch": "message could not be handed to the worker pool"}


def describe(cause: BaseException, kind: str) -> str:
    """The error a client reads: the field and the problem, or which stage failed."""
    if isinstance(cause, PayloadRejected):
        return f"{field_path(cause.path)}: {cause.problem}"
    return f"{_STAGES[kind]}: {parking.echo(cause)}"


def field_path(path: tuple[str | int, ...]) -> str:
    """A body path `(1, "features", "x")` as the task's field `features.x` (the body is
    `[args, kwargs, embed]`)."""
    if not path:
        return "message body"
    head, rest = path[0], tuple(path[1:])
    if head == 1:
        return render_path(rest) if rest else "kwargs"
    name = {0: "args", 2: "embed"}.get(head) if isinstance(head, int) else None
    return render_path((name or str(head), *rest))


def answer(task: Any, app: Celery, task_id: str, reason: str) -> None:
    """Store the task's error result so that a waiting client reads it."""
    name = getattr(task, "name", None)
    if name == "predq.predict":
        result: dict[str, Any] = {"request_id": None, "error": reason}
    elif name == "predq.predict_batch":
        result = {"error": reason, "results": []}
    else:
        result = {"error": reason}
    try:
        (task.backend if task is not None else app.backend).store_result(
            task_id, result, states.SUCCESS)
    except Exception:  # the answer is a courtesy: the message is refused anyway
        log.exception("could not store the error result of poison message %s", task_id)


def park(message: Any, reason: str, task_name: str | None, task_id: str | None) -> int | None:
    """Push the message onto the Redis dead-letter list; its new length, or None when the
    broker is not Redis (or the push failed: then it is only logged and rejected)."""
    channel = message.channel
    if not isinstance(channel, RedisChannel):
        return None
    delivery = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    queue = delivery.get("routing_key") or delivery.get("exchange") or ""
    document = parking.entry(reason, str(queue), task_name, task_id, envelope_text(message))
    with channel.conn_or_acquire() as client:
        return parking.park(client, document)


def envelope_text(message: Any) -> str:
    """The envelope's JSON text as it arrived (predq's Redis transport keeps it during
    delivery), else re-encoded from the decoded envelope."""
    arrived = getattr(message.channel, "arrived_as", None)
    text = arrived(message._raw) if callable(arrived) else None
    if text is not None:
        return str(text)
    try:
        return orjson.dumps(message._raw).decode()
    except (orjson.JSONEncodeError, TypeError):
        return orjson.dumps({"unencodable": repr(message._raw)[:300]}).decode()
