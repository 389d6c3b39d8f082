"""The serving core end to end: real worker subprocesses, real Postgres and Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from producer.sample import FEATURES
from tests.support import models
from tests.support.workerproc import client_app, running_workers, worker_env

pytestmark = pytest.mark.e2e


def logged(url: str) -> pd.DataFrame:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with engine.connect() as conn:
            return pd.read_sql(text("SELECT request_id, model_version, model_sha256, "
                                    "predicted_value FROM model_predictions"), conn)
    finally:
        engine.dispose()


def test_single_row_stream_matches_in_process_predict(pg_url: str, redis_url: str,
                                                      tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    env = worker_env(pg_url, redis_url, tmp_path)
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
