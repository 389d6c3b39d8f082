"""Issue 12.6 through a real worker: a `predq.store_model` re-sent with the same `request_id`
(a retry, a redelivery) returns the version stored the first time, with `reused: true`, and
promotes once, even when its bytes and run differ the second time."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from modelstore import formats
from modelstore.settings import Settings
from producer.client import PredqClient
from tests.support import models
from tests.support.db import fetch
from tests.support.workerproc import client_app, running_workers, worker_env

pytestmark = pytest.mark.e2e


def _count(url: str, table: str) -> int:
    return int(fetch(url, f"SELECT count(*) FROM {table}")[0][0])


def test_a_resent_request_id_stores_and_promotes_once(pg_url: str, redis_url: str,
                                                      tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    env = worker_env(pg_url, redis_url, tmp_path)
    app = client_app(env)
    other_bytes = formats.dumps(models.small_model(models.V2_OFFSET + 1.0), "skops")

    def resend(**kwargs: Any) -> dict[str, Any]:
        body = {"artifact_b64": base64.b64encode(other_bytes).decode(), "format": "skops",
                "model_type": "RandomForest", "run_id": "run-resent", "promote": True,
                **kwargs}
        return dict(app.send_task("predq.store_model", kwargs=body).get(timeout=120))

    try:
        with running_workers(env, tmp_path, app=app) as (worker,), \
                PredqClient(Settings.from_env(env)) as client:
            first = client.register_model(models.small_model(models.V2_OFFSET), "RandomForest",
                                          "run-first", promote=True, direct=False,
                                          format="skops", request_id="upload-42")
            assert (_count(pg_url, "model_artifacts"), _count(pg_url, "promotion_history")) \
                == (2, 2)

            again = resend(request_id="upload-42")
            assert again["model_version"] == first and again["reused"] is True, again
            assert again["generation"] == 2  # the first promotion's, not a new one
            # The producer's own retry: the same answer.
            assert client.register_model(models.small_model(), "RandomForest", "run-third",
                                         promote=True, direct=False, format="skops",
                                         request_id="upload-42") == first
            assert (_count(pg_url, "model_artifacts"), _count(pg_url, "promotion_history")) \
                == (2, 2)
            assert fetch(pg_url, "SELECT upload_request_id FROM model_artifacts WHERE "
                                 f"model_version = '{first}'") == [("upload-42",)]

            # A request id is checked like a prediction's; a bad one stores nothing.
            bad = resend(request_id="bad id!", version="never")
            assert "request_id: character ' ' is not allowed" in bad["error"], bad
            fresh = resend(request_id="upload-43")
            assert fresh["reused"] is False and fresh["model_version"] != first, fresh
            assert _count(pg_url, "model_artifacts") == 3
            log = worker.log_tail(200_000)
    finally:
        app.close()
    assert "Traceback" not in log, log[-3000:]
