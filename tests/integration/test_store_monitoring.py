"""Monitoring: sql/monitoring.sql's views and the seed guide's four monitoring queries
(run unchanged) on Postgres; ModelEvaluationDB's monitoring calls on both backends."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from modelstore import ModelEvaluationDB

MONITORING_SQL = Path(__file__).resolve().parents[2] / "sql" / "monitoring.sql"
# shared/ sits beside the checkout (here and in CI's clone).
SEED_GUIDE = Path(__file__).resolve().parents[3] / "shared" / "seed" / "000_79363e88e71ea6a8.md"

# Verbatim from the seed guide's "Model Size Tracking" and "Prediction Monitoring".
SEED_TOTAL_SIZE = (
    "SELECT \n"
    "    SUM(model_size_bytes) / 1024.0 / 1024.0 as total_size_mb,\n"
    "    COUNT(*) as total_models\n"
    "FROM model_artifacts"
)
SEED_SIZE_BY_TYPE = (
    "SELECT \n"
    "    model_type,\n"
    "    COUNT(*) as count,\n"
    "    AVG(model_size_bytes) / 1024.0 as avg_size_kb\n"
    "FROM model_artifacts\n"
    "GROUP BY model_type"
)
SEED_RECENT = (
    "SELECT \n"
    "    model_version,\n"
    "    COUNT(*) as prediction_count,\n"
    "    AVG(predicted_value) as avg_prediction\n"
    "FROM model_predictions\n"
    "WHERE prediction_time > NOW() - INTERVAL '1 day'\n"
    "GROUP BY model_version"
)
SEED_ACCURACY = (
    "SELECT \n"
    "    model_version,\n"
    "    COUNT(*) as predictions_with_actual,\n"
    "    AVG(ABS(predicted_value - actual_value)) as mean_absolute_error\n"
    "FROM model_predictions\n"
    "WHERE actual_value IS NOT NULL\n"
    "GROUP BY model_version"
)

OLD = datetime.now() - timedelta(days=3)
# (request_id, version, predicted, actual, prediction_time or None for "now")
ROWS = [
    ("a1", "vA", 100.0, 110.0, None), ("a2", "vA", 200.0, 170.0, None),
    ("a3", "vA", 300.0, None, None), ("a4", "vA", 400.0, None, None),
    ("b1", "vB", 50.0, None, OLD), ("b2", "vB", 70.0, None, OLD),
    ("b3", "vB", 90.0, 100.0, None),
]


def _fill(url: str, blobs: dict[str, tuple[str, bytes]]) -> dict[str, int]:
    """Two versions' predictions, three artifacts of two types; returns sizes by version."""
    with ModelEvaluationDB(url) as db:
        for version, (model_type, blob) in blobs.items():
            db.store_model(f"run-{version}", version, model_type, blob, describe=False)
        rows = []
        for rid, version, predicted, actual, when in ROWS:
            row = {"request_id": rid, "model_version": version, "input_features": {"x": 1},
                   "predicted_value": predicted, "actual_value": actual}
            if when is not None:
                row["prediction_time"] = when
            rows.append(row)
        db.store_predictions(rows)
    return {version: len(blob) for version, (_t, blob) in blobs.items()}


@pytest.fixture
def blobs(pipeline_bytes: bytes, pipeline_v2_bytes: bytes, seed_dict_bytes: bytes
          ) -> dict[str, tuple[str, bytes]]:
    return {"vA": ("RandomForest", pipeline_bytes), "vB": ("RandomForest", pipeline_v2_bytes),
            "vC": ("SeedDict", seed_dict_bytes)}


def test_seed_monitoring_queries_run_unchanged(pg_url: str, blobs: dict[str, tuple[str, bytes]],
                                               raw_engine: Callable[[str], Engine]) -> None:
    sizes = _fill(pg_url, blobs)
    if SEED_GUIDE.exists():  # keep the copies above honest
        guide = SEED_GUIDE.read_text()
        for query in (SEED_TOTAL_SIZE, SEED_SIZE_BY_TYPE, SEED_RECENT, SEED_ACCURACY):
            assert query in guide
    with raw_engine(pg_url).connect() as conn:
        total_mb, total_models = conn.execute(text(SEED_TOTAL_SIZE)).one()
        by_type = {r[0]: (r[1], float(r[2])) for r in conn.execute(text(SEED_SIZE_BY_TYPE))}
        recent = {r[0]: (r[1], r[2]) for r in conn.execute(text(SEED_RECENT))}
        accuracy = {r[0]: (r[1], r[2]) for r in conn.execute(text(SEED_ACCURACY))}
    assert total_models == 3
    assert float(total_mb) == pytest.approx(sum(sizes.values()) / 1024 / 1024)
    assert by_type == {
        "RandomForest": (2, pytest.approx((sizes["vA"] + sizes["vB"]) / 2 / 1024)),
        "SeedDict": (1, pytest.approx(sizes["vC"] / 1024)),
    }
    assert recent == {"vA": (4, 250.0), "vB": (1, 90.0)}  # the 3-day-old rows are out
    assert accuracy == {"vA": (2, 20.0), "vB": (1, 10.0)}


def test_monitoring_views(pg_url: str, blobs: dict[str, tuple[str, bytes]],
                          raw_engine: Callable[[str], Engine]) -> None:
    sizes = _fill(pg_url, blobs)
    with raw_engine(pg_url).begin() as conn:
        conn.exec_driver_sql(MONITORING_SQL.read_text())
        conn.exec_driver_sql(MONITORING_SQL.read_text())  # re-runnable
        today = conn.execute(text("SELECT CURRENT_DATE")).scalar_one()
        daily = {(r.day, r.model_version): (r.prediction_count, r.avg_prediction)
                 for r in conn.execute(text("SELECT * FROM predq_daily_prediction_counts"))}
        accuracy = {r.model_version: r for r in conn.execute(text(
            "SELECT * FROM predq_version_accuracy"))}
        size_rows = {r.model_type: r for r in conn.execute(text(
            "SELECT * FROM predq_model_sizes"))}
    assert daily == {(today, "vA"): (4, 250.0), (today, "vB"): (1, 90.0),
                     (OLD.date(), "vB"): (2, 60.0)}
    a, b = accuracy["vA"], accuracy["vB"]
    assert (a.prediction_count, a.labelled_count, a.label_coverage) == (4, 2, 0.5)
    assert a.mean_absolute_error == 20.0
    assert a.root_mean_squared_error == pytest.approx(math.sqrt((10**2 + 30**2) / 2))
    assert (b.prediction_count, b.labelled_count) == (3, 1)
    assert b.label_coverage == pytest.approx(1 / 3)
    assert (b.mean_absolute_error, b.root_mean_squared_error) == (10.0, 10.0)
    total = size_rows[None]
    assert total.is_total and total.model_count == 3
    assert total.total_bytes == sum(sizes.values())
    assert float(total.total_size_mb) == pytest.approx(sum(sizes.values()) / 1024 / 1024)
    forest = size_rows["RandomForest"]
    assert not forest.is_total and forest.model_count == 2
    assert forest.total_bytes == sizes["vA"] + sizes["vB"]
    assert float(size_rows["SeedDict"].avg_size_kb) == pytest.approx(sizes["vC"] / 1024)


def test_monitoring_calls(store_url: str, blobs: dict[str, tuple[str, bytes]]) -> None:
    sizes = _fill(store_url, blobs)
    with ModelEvaluationDB(store_url) as db:
        stats = {s["model_version"]: s for s in db.prediction_stats()}
        recent = {s["model_version"]: s for s in db.prediction_stats(
            since=datetime.now() - timedelta(days=1))}
        daily = {(d["day"], d["model_version"]): d["predictions"]
                 for d in db.daily_prediction_counts(days=7)}
        by_type = {m["model_type"]: m for m in db.model_sizes()}
    a, b = stats["vA"], stats["vB"]
    assert (a["predictions"], a["labelled"], a["coverage"]) == (4, 2, 0.5)
    assert a["mae"] == 20.0 and a["rmse"] == pytest.approx(math.sqrt(500))
    assert (b["predictions"], b["labelled"], b["mae"], b["rmse"]) == (3, 1, 10.0, 10.0)
    assert recent["vB"]["predictions"] == 1
    assert sorted(daily.values()) == [1, 2, 4]
    assert all(isinstance(day, date) for day, _v in daily)
    assert daily[(OLD.date(), "vB")] == 2
    assert by_type["RandomForest"]["count"] == 2
    assert by_type["RandomForest"]["total_bytes"] == sizes["vA"] + sizes["vB"]
    assert by_type["SeedDict"]["total_bytes"] == sizes["vC"]
