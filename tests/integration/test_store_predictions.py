"""The bulk prediction log: request_id dedup on the COPY path (>= 200 rows) and the
multi-row VALUES path (< 200), bad rows refused with the field named, and backfill."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, text

from modelstore import ModelEvaluationDB
from modelstore.defaults import COPY_THRESHOLD_ROWS
from modelstore.errors import InvalidInput

AWKWARD = {"brand": "Škoda", "note": 'say "hi",\nthen\tleave \\ now', "year": 2020,
           "engine_size": 2.5, "nested": {"a": [1, None, True]}}


def _rows(prefix: str, n: int, version: str = "v1") -> list[dict[str, Any]]:
    return [{"request_id": f"{prefix}-{i}", "model_version": version,
             "input_features": {**AWKWARD, "i": i}, "predicted_value": 1000.0 + i,
             "confidence_score": 0.5} for i in range(n)]


def _logged(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT request_id, model_version, input_features, predicted_value, "
            "confidence_score, model_name FROM model_predictions ORDER BY id")).all()


@pytest.mark.parametrize("size", [5, COPY_THRESHOLD_ROWS + 50], ids=["values", "copy"])
def test_duplicates_within_and_across_batches_are_logged_once(
        store_url: str, size: int, raw_engine: Callable[[str], Engine]) -> None:
    db = ModelEvaluationDB(store_url)
    batch = _rows("r", size)
    assert db.store_predictions(batch + batch[:3]) == size  # 3 repeats in the same batch
    assert db.store_predictions(batch) == 0  # a redelivered batch
    mixed = _rows("r", size + 2)  # two new ids among old ones
    assert db.store_predictions(mixed) == 2
    logged = _logged(raw_engine(store_url))
    assert len(logged) == size + 2
    assert len({row.request_id for row in logged}) == size + 2
    first = logged[0]
    features = first.input_features
    if isinstance(features, str):  # SQLite's JSON comes back as text through plain SQL
        import json

        features = json.loads(features)
    assert features == {**AWKWARD, "i": 0}
    assert (first.predicted_value, first.confidence_score, first.model_name) == (
        1000.0, 0.5, "default")


def test_explicit_times_and_numpy_numbers_are_kept(store_url: str,
                                                    raw_engine: Callable[[str], Engine]) -> None:
    when = datetime(2026, 1, 5, 14, 30, 22)
    rows: list[dict[str, Any]] = [
        {"request_id": "t-1", "model_version": "v1", "input_features": {"x": 1},
         "predicted_value": np.float32(1.5), "actual_value": np.float64(2.0),
         "prediction_time": when},
        {"request_id": "t-2", "model_version": "v1", "input_features": '{"x": 2}',
         "predicted_value": np.int64(3)},
    ]
    assert ModelEvaluationDB(store_url).store_predictions(rows) == 2
    with raw_engine(store_url).connect() as conn:
        got = conn.execute(text("SELECT request_id, predicted_value, actual_value, "
                                "prediction_time FROM model_predictions ORDER BY id")).all()
    assert (got[0].predicted_value, got[0].actual_value) == (1.5, 2.0)
    assert str(got[0].prediction_time).startswith("2026-01-05 14:30:22")
    assert got[1].predicted_value == 3.0 and got[1].prediction_time is not None


@pytest.mark.parametrize(("change", "field"), [
    ({"request_id": ""}, "rows[1].request_id"),
    ({"request_id": None}, "rows[1].request_id"),
    ({"request_id": "x" * 129}, "rows[1].request_id"),
    ({"predicted_value": math.nan}, "rows[1].predicted_value"),
    ({"predicted_value": "12"}, "rows[1].predicted_value"),
    ({"predicted_value": True}, "rows[1].predicted_value"),
    ({"confidence_score": math.inf}, "rows[1].confidence_score"),
    ({"actual_value": "n/a"}, "rows[1].actual_value"),
    ({"model_version": ""}, "rows[1].model_version"),
    ({"model_version": "v" * 51}, "rows[1].model_version"),
    ({"model_name": 7}, "rows[1].model_name"),
    ({"input_features": [1, 2]}, "rows[1].input_features"),
    ({"input_features": {"x": math.nan}}, "rows[1].input_features"),
    ({"input_features": {"x": object()}}, "rows[1].input_features"),
    ({"input_features": {"x": "a\x00b"}}, "rows[1].input_features"),
], ids=lambda v: str(v)[:40])
def test_a_bad_row_is_refused_naming_the_field(store_url: str, change: dict[str, Any],
                                               field: str,
                                               raw_engine: Callable[[str], Engine]) -> None:
    rows = _rows("ok", 3)
    rows[1].update(change)
    with pytest.raises(InvalidInput, match=f"^{re.escape(field)}: "):
        ModelEvaluationDB(store_url).store_predictions(rows)
    assert _logged(raw_engine(store_url)) == []


def test_a_row_without_features_is_refused(store_url: str) -> None:
    row = _rows("ok", 1)[0]
    del row["input_features"]
    with pytest.raises(InvalidInput, match=r"rows\[0\].input_features: required"):
        ModelEvaluationDB(store_url).store_predictions([row])


def test_store_prediction_returns_the_request_id(store_url: str) -> None:
    db = ModelEvaluationDB(store_url)
    made_up = db.store_prediction("v1", {"year": 2020}, 22500.5)
    assert len(made_up) == 36  # a UUID
    assert db.store_prediction("v1", {"year": 2020}, 1.0, request_id="mine") == "mine"
    assert db.store_prediction("v1", {"year": 2020}, 2.0, request_id="mine") == "mine"
    assert db.prediction_stats()[0]["predictions"] == 2


def test_backfill_reports_updates_unknown_ids_and_bad_items(
        store_url: str, raw_engine: Callable[[str], Engine]) -> None:
    db = ModelEvaluationDB(store_url)
    db.store_predictions(_rows("r", 4))
    result = db.backfill_actuals([
        {"request_id": "r-0", "actual_value": 1100.0},
        ("r-1", 900),
        {"request_id": "nobody", "actual_value": 5.0},
        {"request_id": "r-2", "actual_value": math.nan},
        {"request_id": "", "actual_value": 1.0},
        "garbage",
    ])
    assert (result.updated, result.unknown) == (2, ["nobody"])
    assert set(result.invalid) == {"r-2", "#4", "#5"}
    assert "actuals[3].actual_value: expected a finite number" in result.invalid["r-2"]
    assert db.backfill_actuals({"r-3": 1003.0, "r-9": 1.0}).unknown == ["r-9"]
    with raw_engine(store_url).connect() as conn:
        actuals = dict(conn.execute(text(
            "SELECT request_id, actual_value FROM model_predictions WHERE actual_time IS NOT "
            "NULL")).all())
    assert actuals == {"r-0": 1100.0, "r-1": 900.0, "r-3": 1003.0}
    stats = db.prediction_stats()[0]
    assert (stats["labelled"], stats["coverage"]) == (3, 0.75)
    assert stats["mae"] == pytest.approx((100 + 101 + 0) / 3)


def test_a_large_backfill(store_url: str) -> None:
    db = ModelEvaluationDB(store_url)
    db.store_predictions(_rows("r", 1200))
    pairs = {f"r-{i}": float(i) for i in range(0, 1300, 1)}
    result = db.backfill_actuals(pairs)
    assert result.updated == 1200
    assert result.unknown == [f"r-{i}" for i in range(1200, 1300)]
