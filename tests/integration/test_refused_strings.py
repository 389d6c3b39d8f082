"""Strings Postgres refuses (a lone surrogate, NUL) are refused per row, with the field
named, and never fail a micro-batch, a bulk write or the spool (issue 12, item 7; issue 19,
item 2). Real Postgres; the worker test runs a real worker process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from modelstore.db import ModelEvaluationDB
from modelstore.errors import InvalidInput
from modelstore.predictions import check_rows
from tests.support import models
from tests.support.db import fetch
from tests.support.workerproc import client_app, running_workers, worker_env
from workers.validation import FeatureSpec, validate_features, validate_rows

LONE = "\ud800"
SPEC = FeatureSpec(("brand", "year"), ("string", "number"))


@pytest.mark.parametrize("value", [LONE, f"Sko{LONE}da", "\udfff", "a\x00b"])
def test_validation_refuses_the_string_naming_the_field(value: str) -> None:
    clean, error = validate_features({"brand": value, "year": 2020}, SPEC)
    assert clean is None and error is not None
    assert error.startswith("features.brand: contains a ") and "cannot be stored" in error
    _, error = validate_features({"brand": value}, None)  # no schema
    assert error is not None and error.startswith("features.brand: ")
    _, error = validate_features({value: 1.0}, None)  # a feature name
    assert error is not None and "lone surrogate" in error


def test_valid_unicode_still_passes() -> None:
    for value in ("Škoda", "😀 emoji", "日本語", "\ue000 private use"):
        clean, error = validate_features({"brand": value, "year": 2020}, SPEC)
        assert error is None and clean == {"brand": value, "year": 2020}


def test_only_the_bad_row_of_a_batch_is_refused() -> None:
    rows: list[object] = [{"brand": "Kia", "year": 2020}, {"brand": LONE, "year": 2020},
                          {"brand": "Audi", "year": 2021}]
    ok, clean, errors = validate_rows(rows, SPEC)
    assert ok == [0, 2] and len(clean) == 2
    assert list(errors) == [1] and errors[1].startswith("rows[1].features.brand: ")


def _row(rid: str, **extra: Any) -> dict[str, Any]:
    row = {"request_id": rid, "model_version": "v1", "input_features": {"brand": "Kia"},
           "predicted_value": 1.0}
    row.update(extra)
    return row


@pytest.mark.parametrize("bad", [
    {"input_features": {"brand": LONE}},
    {"input_features": {LONE: 1}},
    {"input_features": '{"brand": "\\ud800"}'},  # JSON text with a lone surrogate escape
    {"model_sha256": "ab" + LONE},
])
def test_the_store_refuses_the_row_naming_it_and_writes_none_of_the_batch(
        pg_url: str, bad: dict[str, Any]) -> None:
    rows = [_row("s-0"), _row("s-1", **bad), _row("s-2")]
    with pytest.raises(InvalidInput, match=r"rows\[1\]\."):
        check_rows(rows)
    with ModelEvaluationDB(pg_url) as db, pytest.raises(InvalidInput, match=r"rows\[1\]\."):
        db.store_predictions(rows)
    assert fetch(pg_url, "SELECT count(*) FROM model_predictions") == [(0,)]
    with ModelEvaluationDB(pg_url) as db:  # the good rows of the batch still go in
        assert db.store_predictions([rows[0], rows[2]]) == 2
        # an escaped surrogate *pair* is a valid character: stored
        assert db.store_predictions([_row("s-3", input_features='{"e": "\\ud83d\\ude00"}')]) == 1


@pytest.mark.e2e
def test_a_real_worker_refuses_the_bad_row_and_serves_the_rest(pg_url: str, redis_url: str,
                                                              tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    env = worker_env(pg_url, redis_url, tmp_path)
    app = client_app(env)
    good = models.rows(24)
    bad = dict(good[0], brand=LONE)
    with running_workers(env, tmp_path, app=app):
        batch = app.send_task("predq.predict_batch", kwargs={
            "rows": [good[0], bad, good[1]], "request_ids": ["b-0", "b-1", "b-2"]}
        ).get(timeout=60)
        # Single-row tasks share micro-batches: the bad one among concurrent good ones.
        kwargs = [{"features": f, "request_id": f"one-{i}"} for i, f in enumerate(good[2:])]
        kwargs.insert(7, {"features": bad, "request_id": "one-bad"})
        with ThreadPoolExecutor(max_workers=8) as pool:
            singles = list(pool.map(
                lambda kw: app.send_task("predq.predict", kwargs=kw).get(timeout=60), kwargs))
    errors = {r["request_id"]: r["error"] for r in batch["results"] if "error" in r}
    assert list(errors) == ["b-1"] and errors["b-1"].startswith("rows[1].features.brand: ")
    by_id = {r["request_id"]: r for r in singles}
    assert by_id["one-bad"]["error"].startswith("features.brand: contains a lone surrogate")
    assert all("prediction" in r for rid, r in by_id.items() if rid != "one-bad")
    logged = {rid for (rid,) in fetch(pg_url, "SELECT request_id FROM model_predictions")}
    assert logged == {"b-0", "b-2"} | {f"one-{i}" for i in range(len(good) - 2)}
