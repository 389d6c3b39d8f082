"""fast_saferepr gives Celery's text for flat results and defers to saferepr otherwise."""

from __future__ import annotations

import celery.app.trace
import pytest
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


def test_install_patches_the_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(celery.app.trace, "saferepr", saferepr)
    fastrepr.install()
    assert celery.app.trace.saferepr is fastrepr.fast_saferepr
