"""The serving core end to end: real worker subprocesses, real Postgres, on Redis and on
RabbitMQ (the `broker` fixture)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytest

from producer.sample import FEATURES
from tests.support import models
from tests.support.db import fetch
from tests.support.rabbit import Broker
from tests.support.workerproc import client_app, running_workers, worker_env

pytestmark = pytest.mark.e2e


def logged(url: str) -> pd.DataFrame:
    return pd.DataFrame(fetch(url, "SELECT request_id, model_version, model_sha256, "
                              "predicted_value FROM model_predictions"),
                        columns=["request_id", "model_version", "model_sha256",
                                 "predicted_value"])

def test_single_row_stream_matches_in_process_predict(pg_url: str, broker: Broker,
                                                      tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    env = worker_env(pg_url, broker.url, tmp_path, **broker.env())
    app = client_app(env)
    feats = models.rows(300)
    ids = [str(uuid.uuid4()) for _ in feats]
    with running_workers(env, tmp_path, app=app):
        pending = [app.send_task("predq.predict", kwargs={"features": f, "request_id": r})
                   for f, r in zip(feats, ids, strict=True)]
        results = [p.get(timeout=60) for p in pending]
    expected = models.small_model().predict(pd.DataFrame(feats)[list(FEATURES)])
    assert [r["request_id"] for r in results] == ids
    assert all(r["model_version"] == "v1" for r in results)
    assert [r["prediction"] for r in results] == pytest.approx(list(expected))
    frame = logged(pg_url)
    assert sorted(frame.request_id) == sorted(ids)
    assert frame.request_id.is_unique
    assert set(frame.model_version) == {"v1"}


def test_mixed_batch_bad_rows_get_errors_good_rows_are_logged(pg_url: str, broker: Broker,
                                                              tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    env = worker_env(pg_url, broker.url, tmp_path, **broker.env())
    app = client_app(env)
    good = models.rows(4)
    bad = [
        {k: v for k, v in good[0].items() if k != "mileage"},
        dict(good[0], colour="red"),
        dict(good[0], year="2020"),
        dict(good[0], engine_size=float("nan")),
        dict(good[0], brand={"nested": 1}),
        dict(good[0], condition=None),
    ]
    rows = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3], bad[4], bad[5], good[3]]
    ids = [f"mixed-{i}" for i in range(len(rows))]
    with running_workers(env, tmp_path, app=app):
        result = app.send_task("predq.predict_batch",
                               kwargs={"rows": rows, "request_ids": ids}).get(timeout=60)
        after = app.send_task("predq.predict", kwargs={"features": good[0]}).get(timeout=30)
    errors = {r["request_id"]: r["error"] for r in result["results"] if "error" in r}
    assert errors == {
        "mixed-1": "rows[1].features.mileage: missing",
        "mixed-3": errors["mixed-3"], "mixed-4": errors["mixed-4"],
        "mixed-6": errors["mixed-6"], "mixed-7": errors["mixed-7"], "mixed-8": errors["mixed-8"],
    }
    assert "colour" in errors["mixed-3"] and "unexpected" in errors["mixed-3"]
    assert "features.year" in errors["mixed-4"] and "number" in errors["mixed-4"]
    assert "features.engine_size" in errors["mixed-6"] and "finite" in errors["mixed-6"]
    assert "features.brand" in errors["mixed-7"]
    assert "features.condition" in errors["mixed-8"] and "null" in errors["mixed-8"]
    assert "prediction" in after  # the worker lives on
    frame = logged(pg_url)
    good_ids = {"mixed-0", "mixed-2", "mixed-5", "mixed-9"}
    assert good_ids <= set(frame.request_id)
    assert not set(errors) & set(frame.request_id)
