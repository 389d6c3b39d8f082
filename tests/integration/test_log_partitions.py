"""The partitioned prediction log on Postgres (issue 11): partitions ahead, stragglers in
the default partition, prune, dedup across a partition boundary."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from modelstore import ModelEvaluationDB, logddl, partitions
from modelstore.errors import InvalidInput
from tests.support.db import fetch

NOW = datetime(2026, 3, 10, 15, 30)


def _rows(prefix: str, n: int, when: datetime | None, **extra: Any) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"request_id": f"{prefix}-{i}", "model_version": "v1",
                               "input_features": {"x": i}, "predicted_value": float(i), **extra}
        if when is not None:
            row["prediction_time"] = when
        rows.append(row)
    return rows


def _where(url: str) -> dict[str, int]:
    """Rows per partition."""
    return dict(fetch(url, "SELECT tableoid::regclass::text, count(*) FROM model_predictions "
                           "GROUP BY 1"))


def test_partitions_are_created_ahead_once(pg_url: str) -> None:
    engine = ModelEvaluationDB(pg_url).engine
    created = partitions.ensure_ahead(engine, "day", 3, now=NOW)
    assert created == [f"model_predictions_d202603{d}" for d in (10, 11, 12, 13)]
    assert partitions.ensure_ahead(engine, "day", 3, now=NOW) == []
    # Another grain never overlaps what exists: the week of the 10th is taken by days.
    assert partitions.ensure_ahead(engine, "week", 1, now=NOW) == ["model_predictions_w20260316"]
    # April is free, and one month ahead of it.
    assert partitions.ensure_ahead(engine, "month", 1, now=NOW + timedelta(days=30)) == [
        "model_predictions_m20260401", "model_predictions_m20260501"]
    with engine.connect() as conn:
        bounds = [(p.start, p.end) for p in partitions.list_partitions(conn)]
    assert bounds[0] == (datetime(2026, 3, 10), datetime(2026, 3, 11))
    assert bounds[-1] == (datetime(2026, 5, 1), datetime(2026, 6, 1))


def test_a_straggler_lands_in_the_default_partition_and_is_counted(pg_url: str) -> None:
    db = ModelEvaluationDB(pg_url)
    partitions.ensure_ahead(db.engine, "day", 1, now=NOW)
    assert db.store_predictions(_rows("late", 3, datetime(1999, 12, 31, 23))) == 3
    assert db.store_predictions(_rows("now", 2, NOW)) == 2
    assert _where(pg_url) == {logddl.DEFAULT_PARTITION: 3, "model_predictions_d20260310": 2}
    assert db.prediction_stats()[0]["predictions"] == 5
    # A partition made later for the straggler's day takes its rows out of the default.
    with db.engine.begin() as conn:
        made = partitions.create_range(conn, datetime(1999, 12, 31), datetime(1999, 12, 31),
                                       "day")
    assert made == ["model_predictions_d19991231"]
    assert _where(pg_url) == {"model_predictions_d19991231": 3,
                              "model_predictions_d20260310": 2}
    assert db.prediction_stats()[0]["predictions"] == 5
    assert db.store_predictions(_rows("late", 3, datetime(1999, 12, 31, 23))) == 0  # dedup


def test_prune_drops_whole_old_partitions_and_nothing_else(pg_url: str) -> None:
    db = ModelEvaluationDB(pg_url)
    with db.engine.begin() as conn:
        partitions.create_range(conn, NOW - timedelta(days=40), NOW, "day")
    for days in range(41):
        db.store_predictions(_rows(f"d{days}", 5, NOW - timedelta(days=days), actual_value=1.0))
    db.store_predictions(_rows("straggler", 2, datetime(2001, 1, 1)))
    before = db.prediction_stats()
    dropped = partitions.prune(db.engine, timedelta(days=30), "day", now=NOW)
    # Wholly older than 2026-02-08 15:30: the days up to and including the 7th.
    assert dropped == [partitions.partition_name(NOW - timedelta(days=d), "day")
                       for d in range(40, 30, -1)]
    left = dict(fetch(pg_url, "SELECT min(prediction_time)::date, count(*) FROM "
                              "model_predictions WHERE request_id NOT LIKE 'straggler%'"))
    assert left == {(NOW - timedelta(days=30)).date(): 5 * 31}
    assert _where(pg_url)[logddl.DEFAULT_PARTITION] == 2  # never dropped
    assert db.prediction_stats() == before  # the rollups keep every row ever logged
    assert fetch(pg_url, "SELECT pruned_before FROM predq_log_state") == [
        (datetime(2026, 2, 8),)]
    assert partitions.prune(db.engine, timedelta(days=30), "day", now=NOW) == []


@pytest.mark.parametrize("age", [timedelta(0), timedelta(hours=12), timedelta(hours=-1)])
def test_prune_refuses_to_drop_everything_without_force(pg_url: str, age: timedelta) -> None:
    db = ModelEvaluationDB(pg_url)
    with db.engine.begin() as conn:
        partitions.create_range(conn, NOW - timedelta(days=3), NOW, "day")
    with pytest.raises(InvalidInput, match="--force"):
        partitions.prune(db.engine, age, "day", now=NOW)
    with db.engine.connect() as conn:
        assert len(partitions.list_partitions(conn)) == 4  # nothing dropped
    assert partitions.prune(db.engine, timedelta(hours=12), "day", force=True,
                            now=NOW) == [partitions.partition_name(NOW - timedelta(days=d),
                                                                   "day") for d in (3, 2, 1)]


def test_parse_age() -> None:
    assert partitions.parse_age("30d") == timedelta(days=30)
    assert partitions.parse_age("2w") == timedelta(days=14)
    assert partitions.parse_age("12h") == timedelta(hours=12)
    with pytest.raises(InvalidInput, match="--older-than"):
        partitions.parse_age("30 days")


@pytest.mark.parametrize("size", [3, 250], ids=["values", "copy"])
def test_a_redelivery_across_a_partition_boundary_is_logged_once(pg_url: str,
                                                                  size: int) -> None:
    db = ModelEvaluationDB(pg_url)
    partitions.ensure_ahead(db.engine, "day", 2, now=NOW)
    stamped = datetime(2026, 3, 10, 23, 59, 59, 900000)
    # The producer's request_time travels with the message: redelivered after midnight,
    # it is the same row in the same partition.
    assert db.store_predictions(_rows("s", size, stamped)) == size
    assert db.store_predictions(_rows("s", size, stamped)) == 0
    # A raw client sent no request_time: the worker's first-seen times differ and straddle
    # midnight; the window check still finds the first row in the previous partition.
    first = _rows("loose", size, stamped, loose_time=True)
    again = _rows("loose", size, datetime(2026, 3, 11, 0, 0, 1), loose_time=True)
    assert db.store_predictions(first) == size
    assert db.store_predictions(again) == 0
    assert _where(pg_url) == {"model_predictions_d20260310": 2 * size}
    # Outside the stated window (LOOSE_DEDUP_WINDOW_S, a day) a loose re-send is new.
    late = _rows("loose", size, datetime(2026, 3, 12, 1), loose_time=True)
    assert db.store_predictions(late) == size
    # One row per (request_id, version): the same request under another version is logged.
    assert db.store_predictions(_rows("s", size, stamped, model_version="v2")) == size
    stats = {r["model_version"]: r["predictions"] for r in db.prediction_stats()}
    assert stats == {"v1": 3 * size, "v2": size}
