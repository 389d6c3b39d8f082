"""The rollups answer exactly what a full scan of the log answers (issue 11), after random
bulk and single writes, the seed's plain INSERTs, backfills, raw UPDATE/DELETE, a refresh
and a prune; on Postgres (partitioned) and SQLite (plain) alike."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from modelstore import ModelEvaluationDB, partitions, rollups

NOW = datetime(2026, 3, 10, 15, 30)
VERSIONS = [("m1", "v1"), ("m1", "v2"), ("m2", "v1")]
SCAN = """
SELECT model_name, model_version, COUNT(*), COUNT(actual_value),
       SUM(ABS(predicted_value - actual_value)),
       SUM((predicted_value - actual_value) * (predicted_value - actual_value)),
       MIN(prediction_time), MAX(prediction_time)
FROM model_predictions {where} GROUP BY model_name, model_version
"""


def _scan(db: ModelEvaluationDB, since: datetime | None = None) -> dict[tuple[str, str], Any]:
    where = "" if since is None else "WHERE prediction_time >= :since"
    with db.engine.connect() as conn:
        rows = conn.execute(text(SCAN.format(where=where)), {"since": since}).all()
    out = {}
    for name, version, n, labelled, abs_err, sq_err, first, last in rows:
        out[(name, version)] = {
            "predictions": n, "labelled": labelled,
            "mae": abs_err / labelled if labelled else None,
            "rmse": math.sqrt(sq_err / labelled) if labelled else None,
            "first": _time(first), "last": _time(last)}
    return out


def _time(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _stats(db: ModelEvaluationDB, since: datetime | None = None) -> dict[tuple[str, str], Any]:
    return {(r["model_name"], r["model_version"]): {
        "predictions": r["predictions"], "labelled": r["labelled"], "mae": r["mae"],
        "rmse": r["rmse"], "first": r["first_prediction"], "last": r["last_prediction"]}
        for r in db.prediction_stats(since=since)}


def _assert_equal(got: dict[Any, Any], want: dict[Any, Any], times: bool = True) -> None:
    assert got.keys() == want.keys()
    for key, expected in want.items():
        figures = got[key]
        assert (figures["predictions"], figures["labelled"]) == (
            expected["predictions"], expected["labelled"]), key
        for name in ("mae", "rmse"):
            assert figures[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-9), key
        if times:
            assert (figures["first"], figures["last"]) == (expected["first"], expected["last"])


def _random_rows(rng: random.Random, prefix: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        name, version = rng.choice(VERSIONS)
        rows.append({"request_id": f"{prefix}-{i}", "model_name": name,
                     "model_version": version, "input_features": {"x": i},
                     "predicted_value": rng.uniform(-100, 100),
                     "actual_value": rng.choice([None, None, rng.uniform(-100, 100)]),
                     "prediction_time": NOW - timedelta(seconds=rng.uniform(0, 5 * 86400)),
                     "loose_time": rng.random() < 0.2})
    return rows


@pytest.mark.parametrize("seed", [1, 2])
def test_rollups_equal_a_full_scan_after_every_kind_of_write(store_url: str,
                                                             seed: int) -> None:
    rng = random.Random(seed)
    db = ModelEvaluationDB(store_url)
    postgres = db.engine.dialect.name == "postgresql"
    if postgres:
        with db.engine.begin() as conn:  # days 1-4 get partitions; the rest go to default
            partitions.create_range(conn, NOW - timedelta(days=4), NOW, "day")
    ids: list[str] = []
    for batch in range(8):
        rows = _random_rows(rng, f"b{batch}", rng.choice([1, 7, 150, 450]))
        db.store_predictions(rows)
        db.store_predictions(rng.sample(rows, len(rows) // 3))  # redelivered: no new rows
        ids += [r["request_id"] for r in rows]
    for i in range(5):  # the seed API, one row at a time
        db.store_prediction("v1", {"x": i}, float(i), actual_value=i + 0.5,
                            request_id=f"single-{i}", model_name="m1")
    with db.engine.begin() as conn:  # the seed's plain INSERT: no request_id, default time
        conn.execute(text("INSERT INTO model_predictions (model_version, input_features, "
                          "predicted_value, actual_value) VALUES ('v9', '{}', 1.0, 3.0)"))
    _assert_equal(_stats(db), _scan(db))

    for _ in range(3):  # backfills, including changed values and unknown ids
        chosen = rng.sample(ids, len(ids) // 4)
        result = db.backfill_actuals({rid: rng.uniform(-100, 100) for rid in chosen}
                                     | {"nope": 1.0})
        assert result.unknown == ["nope"]
    since = NOW - timedelta(days=2, minutes=17)
    _assert_equal(_stats(db), _scan(db))
    _assert_equal(_stats(db, since), _scan(db, since))
    _assert_equal(_stats(db, NOW - timedelta(days=1)), _scan(db, NOW - timedelta(days=1)))

    with db.engine.begin() as conn:  # raw SQL edits the triggers see
        conn.execute(text("UPDATE model_predictions SET predicted_value = predicted_value + 1 "
                          "WHERE request_id LIKE 'b1-%'"))
        conn.execute(text("DELETE FROM model_predictions WHERE request_id LIKE 'b2-1%'"))
    # First/last time are those of every row ever logged: a DELETE does not move them.
    _assert_equal(_stats(db), _scan(db), times=False)

    before = _stats(db)
    assert rollups.refresh(db.engine) > 0
    _assert_equal(_stats(db), before, times=False)
    if postgres:  # the figures of dropped partitions stay in the rollups
        dropped = partitions.prune(db.engine, timedelta(days=2), "day", now=NOW)
        assert len(dropped) == 2
        _assert_equal(_stats(db), before, times=False)
        assert rollups.refresh(db.engine) > 0  # rebuilds only hours still in the log
        _assert_equal(_stats(db), before, times=False)


def test_daily_counts_equal_a_full_scan(store_url: str) -> None:
    rng = random.Random(3)
    db = ModelEvaluationDB(store_url)
    rows = _random_rows(rng, "d", 300)
    for row in rows:
        row["prediction_time"] = datetime.utcnow() - timedelta(hours=rng.uniform(0, 70))
    db.store_predictions(rows)
    got = {(r["day"], r["model_name"], r["model_version"]): (r["predictions"],
                                                             r["avg_prediction"])
           for r in db.daily_prediction_counts(days=30)}
    want: dict[tuple[Any, ...], list[float]] = {}
    for row in rows:
        key = (row["prediction_time"].date(), row["model_name"], row["model_version"])
        want.setdefault(key, []).append(row["predicted_value"])
    assert got.keys() == want.keys()
    for key, values in want.items():
        assert got[key][0] == len(values)
        assert got[key][1] == pytest.approx(sum(values) / len(values), rel=1e-9)
