"""workers.poison: how refusals are worded, which envelopes are refused, the settings,
the metric, and the Celery/billiard internals the dispatch guard relies on (pinned here so
that an upgrade that moves them fails loudly)."""

from __future__ import annotations

import inspect
from typing import Any

import billiard.pool
import celery.concurrency.prefork
import celery.worker.components
import celery.worker.strategy
import pytest
from celery import Celery
from kombu.asynchronous.semaphore import LaxBoundedSemaphore
from kombu.exceptions import DecodeError

from modelstore.errors import ConfigError, PayloadRejected
from modelstore.settings import Settings
from workers import metrics, poison


@pytest.mark.parametrize(("path", "shown"), [
    ((1, "features", "mileage", 0, 0, "..."), "features.mileage[0][0]…"),
    ((1, "rows", 3, "x"), "rows[3].x"),
    ((0, 2), "args[2]"),
    ((2, "callbacks"), "embed.callbacks"),
    ((), "message body"),
])
def test_field_paths_read_like_validation_errors(path: tuple[Any, ...], shown: str) -> None:
    assert poison.field_path(path) == shown


def test_refusals_name_the_field_or_the_stage() -> None:
    rejected = PayloadRejected((1, "features", "x"), "nested more than 32 levels deep")
    assert poison.describe(poison._cause(DecodeError(rejected)), "decode") == \
        "features.x: nested more than 32 levels deep"
    text = poison.describe(RecursionError("maximum recursion depth exceeded"), "dispatch")
    assert text == ("message could not be handed to the worker pool: RecursionError: "
                    "maximum recursion depth exceeded")
    assert poison.describe(ValueError("x" * 5000), "decode").startswith(
        "Can't decode message body: ValueError: xxx")
    assert len(poison.describe(ValueError("x" * 5000), "decode")) < 400


class _Message:
    def __init__(self, headers: object, properties: object = None) -> None:
        self.headers = headers
        self.properties = {} if properties is None else properties


def test_deep_or_malformed_envelopes_are_refused() -> None:
    deep: Any = []
    for _ in range(40):
        deep = [deep]
    ok = {"id": "x", "task": "t"}
    assert poison.envelope_problem(_Message(ok)) is None
    assert poison.envelope_problem(_Message({**ok, "x": deep})) == (
        ("headers",), "nested more than 32 levels deep")
    assert poison.envelope_problem(_Message(ok, {"p": {"q": deep}})) is not None
    assert "JSON objects" in str(poison.envelope_problem(_Message(["not", "a", "dict"])))
    for bad in ({"id": 12345}, {"id": ""}, {"id": "x" * 300}, {"root_id": 5},
                {"retries": "2"}, {"timelimit": "x" * 10}, {"timelimit": [1, 2, 3]}):
        problem = poison.envelope_problem(_Message({**ok, **bad}))
        assert problem is not None and problem[0] == ("headers", next(iter(bad))), bad
    rejected = PayloadRejected(("headers", "id"), "expected a task id")
    assert poison.describe(rejected, "decode") == "headers.id: expected a task id"


def test_install_guards_every_task_once() -> None:
    app = Celery("poison-test")

    @app.task(name="t.one")
    def one() -> None:
        return None

    poison.install(app, Settings())
    poison.install(app, Settings())  # a second worker start in one process
    assert one.Strategy == poison.STRATEGY
    assert one.inner_strategy == poison.DEFAULT_STRATEGY


def test_settings() -> None:
    s = Settings.from_env({"PREDQ_MAX_JSON_DEPTH": "64", "PREDQ_MAX_JSON_ITEMS": "10",
                           "PREDQ_DEAD_LETTER_MAX": "5"})
    assert (s.max_json_depth, s.max_json_items, s.dead_letter_max) == (64, 10, 5)
    assert Settings.from_env({}).max_json_depth == 32
    for bad in ("4", "5000", "deep"):
        with pytest.raises(ConfigError, match="PREDQ_MAX_JSON_DEPTH"):
            Settings.from_env({"PREDQ_MAX_JSON_DEPTH": bad})
    with pytest.raises(ConfigError, match="PREDQ_DEAD_LETTER_MAX"):
        Settings.from_env({"PREDQ_DEAD_LETTER_MAX": "0"})


def test_poison_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    m = metrics.PredqMetrics()
    monkeypatch.setattr(metrics, "_metrics", m)
    metrics.observe_poison("decode", 3)
    metrics.observe_poison("dispatch", None)
    assert m.registry.get_sample_value("predq_poison_messages_total",
                                       {"reason": "decode"}) == 1.0
    assert m.registry.get_sample_value("predq_dead_letter_depth") == 3.0


# --- what the guard relies on in celery 5.7 / billiard 4.2 ------------------------------

def test_strategy_hands_the_request_to_callbacks_before_dispatch() -> None:
    """The guard learns the Request through the `callbacks` argument, which Celery's
    default strategy calls with it just before `handle(req)` (the hand-over)."""
    source = inspect.getsource(celery.worker.strategy.default)
    assert source.index("[callback(req) for callback in callbacks]") < \
        source.rindex("handle(req)")


def test_billiard_registers_the_result_before_pickling() -> None:
    """A hand-over that raises leaves billiard's ApplyResult in `pool._cache` (keyed by
    job, carrying correlation_id) and the worker's semaphore slot taken: the guard
    removes the one and releases the other."""
    source = inspect.getsource(billiard.pool.Pool.apply_async)
    assert source.index("ApplyResult(") < source.index("self._quick_put(")
    assert "self._cache" in source
    assert "correlation_id" in inspect.signature(billiard.pool.ApplyResult).parameters
    assert "self._pool = " in inspect.getsource(celery.concurrency.prefork.TaskPool.on_start)
    assert "w.semaphore = LaxBoundedSemaphore" in inspect.getsource(
        celery.worker.components.Pool.create)
    semaphore = LaxBoundedSemaphore(2)
    semaphore.acquire(lambda: None)
    assert semaphore.value == 1
    semaphore.release()
    assert semaphore.value == 2
