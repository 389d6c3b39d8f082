"""fast_saferepr gives Celery's text for flat results and defers to saferepr otherwise."""

from __future__ import annotations

import uuid
from typing import Any

import celery.app.trace
import pytest
from celery import Celery
from celery.utils.saferepr import saferepr

from workers import fastrepr

RESULT = {"request_id": "pf1-123", "prediction": 12345.678, "confidence": None,
          "model_version": "bench-v1", "model_sha256": "ab" * 32}


@pytest.mark.parametrize("value", [
    RESULT,
    {"updated": 3, "unknown": [], "invalid": {}},  # nested: Celery's saferepr
    "pong",
    {"model_version": "v1", "results": [dict(RESULT) for _ in range(200)]},
    {i: i for i in range(3)},  # non-string keys
])
def test_matches_celery_saferepr(value: object) -> None:
    assert fastrepr.fast_saferepr(value, 1024) == saferepr(value, 1024)


def test_a_long_text_is_cut_like_celery_cuts_it() -> None:
    value = {"request_id": "x" * 5000}
    assert fastrepr.fast_saferepr(value, 100) == saferepr(value, 100)
    assert len(fastrepr.fast_saferepr(value, 100)) < 200


def test_celerys_tracer_reprs_a_result_through_the_swapped_saferepr(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a task through Celery's real tracer: the success path must call whatever
    `celery.app.trace.saferepr` is, i.e. our fast_saferepr once installed."""
    seen: list[Any] = []
    fast = fastrepr.fast_saferepr

    def spy(o: Any, maxlen: int | None = None, *args: Any, **kwargs: Any) -> str:
        seen.append(o)
        return fast(o, maxlen, *args, **kwargs)

    monkeypatch.setattr(celery.app.trace, "saferepr", celery.app.trace.saferepr)
    monkeypatch.setattr(fastrepr, "fast_saferepr", spy)
    fastrepr.install()
    app = Celery("fastrepr-test", broker="memory://", backend="cache+memory://")
    result = {"request_id": "r1", "prediction": 1.5, "confidence": None}

    @app.task(name="fastrepr.echo")
    def echo() -> dict[str, Any]:
        return dict(result)

    tracer = celery.app.trace.build_tracer(echo.name, echo, app=app, eager=False)
    info = tracer(str(uuid.uuid4()), (), {}, {})
    assert info.retval == result
    assert seen == [result], ("celery.app.trace no longer reprs results through its "
                              "module-level saferepr: workers/fastrepr.py has no effect")
    app.close()


