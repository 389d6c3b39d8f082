"""The partitioned log through a real worker: one row per (request_id, version), the
producer's request_time as the row's time, and the maintenance thread's partitions."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelstore import ModelEvaluationDB, partitions
from producer import payloads
from tests.support import models
from tests.support.db import fetch
from tests.support.workerproc import client_app, running_workers, worker_env

pytestmark = pytest.mark.e2e


def test_a_request_resent_after_a_promote_is_logged_under_each_version(
        pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """Issue 17 item 9: the log kept v1's row only, and actuals scored v1."""
    models.register(pg_url, "v1")
    models.register(pg_url, "v2", offset=models.V2_OFFSET, promote=False)
    env = worker_env(pg_url, redis_url, tmp_path)
    app = client_app(env)
    feats = models.rows(1)[0]
    with running_workers(env, tmp_path, app=app):
        first = app.send_task("predq.predict", kwargs=payloads.predict_kwargs(
            feats, "default", "r1", None)).get(timeout=60)
        result = ModelEvaluationDB(pg_url).set_production_model("v2", reason="e2e test")
        app.control.broadcast("predq_promote", reply=False, arguments={
            "model": "default", "generation": result.generation, "promoted_at": time.time()})
        time.sleep(3)  # a generation poll (0.5 s here) has run, broadcast or not
        second = app.send_task("predq.predict", kwargs=payloads.predict_kwargs(
            feats, "default", "r1", None)).get(timeout=60)
    assert (first["model_version"], second["model_version"]) == ("v1", "v2")
    logged = fetch(pg_url, "SELECT model_version, predicted_value FROM model_predictions "
                           "WHERE request_id = 'r1' ORDER BY model_version")
    assert logged == [("v1", pytest.approx(first["prediction"])),
                      ("v2", pytest.approx(second["prediction"]))]
    # A backfill scores both versions on the same request.
    ModelEvaluationDB(pg_url).backfill_actuals({"r1": 2020.0})
    assert fetch(pg_url, "SELECT count(actual_value) FROM model_predictions") == [(2,)]


def test_request_time_is_the_rows_time_and_a_redelivery_after_midnight_is_one_row(
        pg_url: str, redis_url: str, tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    env = worker_env(pg_url, redis_url, tmp_path, PREDQ_LOG_PARTITIONS_AHEAD="2")
    app = client_app(env)
    feats = models.rows(2)
    today = datetime.now(UTC).replace(tzinfo=None).replace(hour=0, minute=0, second=0,
                                                           microsecond=0)
    stamped = (today - timedelta(microseconds=100_000)).isoformat()  # yesterday 23:59:59.9
    with running_workers(env, tmp_path, app=app):
        kwargs = {"features": feats[0], "request_id": "late", "request_time": stamped}
        answers = [app.send_task("predq.predict", kwargs=kwargs).get(timeout=60)
                   for _ in range(2)]  # the second is the redelivered message
        batch = app.send_task("predq.predict_batch", kwargs={
            "rows": feats, "request_ids": ["b0", "b1"], "request_time": stamped}
        ).get(timeout=60)
        bad = app.send_task("predq.predict", kwargs={
            "features": feats[0], "request_id": "bad", "request_time": "yesterday"}
        ).get(timeout=60)
        with ModelEvaluationDB(pg_url).engine.connect() as conn:
            made = [p.name for p in partitions.list_partitions(conn)]
    assert all("error" not in a for a in answers) and "error" not in batch["results"][0]
    assert bad["error"].startswith("request_time: expected an ISO 8601 timestamp")
    # The maintenance thread made today's partition and two ahead on start.
    assert made == [partitions.partition_name(today + timedelta(days=d), "day")
                    for d in range(3)]
    assert fetch(pg_url, "SELECT request_id, prediction_time, tableoid::regclass::text "
                         "FROM model_predictions ORDER BY request_id") == [
        (rid, datetime.fromisoformat(stamped), "model_predictions_default")
        for rid in ("b0", "b1", "late")]
