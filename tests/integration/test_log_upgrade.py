"""`predq db upgrade` of a predq 1 database holding data: the log becomes partitioned with
bigint ids and a role column, its rows and per-version figures intact; twice is a no-op."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from modelstore import ModelEvaluationDB, migrate
from modelstore.errors import SchemaError
from tests.support.db import fetch

SCHEMA_V1 = Path(__file__).resolve().parents[2] / "sql" / "legacy_schema_v1.sql"
# Sums rounded: a float sum in another row order differs in its last bits.
FIGURES = ("SELECT model_version, count(*), count(actual_value), "
           "round(sum(predicted_value)::numeric, 9), "
           "round(sum(abs(predicted_value - actual_value))::numeric, 9), min(id), max(id), "
           "count(DISTINCT request_id) FROM model_predictions GROUP BY 1 ORDER BY 1")


def _v1_database(engine: Engine, n: int) -> None:
    rng = random.Random(5)
    start = datetime(2026, 2, 1)
    with engine.begin() as conn:
        conn.exec_driver_sql(SCHEMA_V1.read_text())
        values = [(f"r{i}", rng.choice(["v1", "v2"]), json.dumps({"x": i}), rng.random(),
                   rng.choice([None, rng.random()]), start + timedelta(minutes=7 * i))
                  for i in range(n)]
        conn.exec_driver_sql(
            "INSERT INTO model_predictions (request_id, model_version, input_features, "
            "predicted_value, actual_value, prediction_time) VALUES "
            + ", ".join(["(%s, %s, %s, %s, %s, %s)"] * n), tuple(v for row in values for v in row))


def test_a_v1_database_with_data_migrates_with_its_rows_and_figures(
        pg_url: str, raw_engine: Callable[[str], Engine]) -> None:
    _v1_database(raw_engine(pg_url), 3000)  # about 15 days of rows
    before = fetch(pg_url, FIGURES)
    with pytest.raises(SchemaError, match="predq db upgrade"):
        ModelEvaluationDB(pg_url)

    steps = migrate.upgrade(pg_url)
    assert steps == ["created table model_prediction_rollups", "created table predq_log_state",
                     "rebuilt model_predictions as a partitioned table with bigint ids, a role "
                     f"column and rollups: copied 3000 rows into {_days(pg_url)} new partitions",
                     "added column model_artifacts.upload_request_id",
                     "created index uq_model_artifacts_upload_request",
                     "recorded predq schema version 3"]
    assert migrate.upgrade(pg_url) == []  # twice: a no-op
    assert fetch(pg_url, FIGURES) == before
    assert fetch(pg_url, "SELECT data_type FROM information_schema.columns WHERE "
                         "table_name = 'model_predictions' AND column_name = 'id'") == [
        ("bigint",)]
    assert fetch(pg_url, "SELECT DISTINCT role FROM model_predictions") == [("production",)]
    assert fetch(pg_url, "SELECT count(*) FROM model_predictions_default") == [(0,)]

    db = ModelEvaluationDB(pg_url)
    stats = {r["model_version"]: (r["predictions"], r["labelled"]) for r in db.prediction_stats()}
    assert stats == {v: (n, labelled) for v, n, labelled, *_ in before}
    # New rows continue the ids; the dedup key is per version now.
    db.store_predictions([{"request_id": "r1", "model_version": "v3", "input_features": {},
                           "predicted_value": 1.0}])
    max_before = max(row[6] for row in before)
    assert fetch(pg_url, "SELECT id FROM model_predictions WHERE model_version = 'v3'") == [
        (max_before + 1,)]


def _days(url: str) -> int:
    """Partitions the upgrade made: every day from the first row to today."""
    (first,) = fetch(url, "SELECT min(prediction_time) FROM model_predictions")[0]
    return (datetime.utcnow().date() - first.date()).days + 1
