"""The columnar predict_batch payload through a real worker, sent by task name from a
plain Celery client (issue 16): the same results and logged rows as the row payload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support import models
from tests.support.db import fetch
from tests.support.workerproc import client_app, running_workers, worker_env

WHEN = "2026-01-02T03:04:05"


def logged(pg_url: str, prefix: str) -> dict[str, tuple[Any, ...]]:
    rows = fetch(pg_url, "SELECT request_id, model_version, input_features, predicted_value "
                         f"FROM model_predictions WHERE request_id LIKE '{prefix}%'")
    return {rid[len(prefix):]: rest for rid, *rest in rows}


def without_prefix(results: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [dict(r, request_id=r["request_id"][len(prefix):]) for r in results]


@pytest.mark.e2e
def test_columnar_and_row_payloads_agree_through_a_real_worker(pg_url: str, redis_url: str,
                                                               tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    env = worker_env(pg_url, redis_url, tmp_path)
    app = client_app(env)
    rows = models.rows(10)
    rows[3] = dict(rows[3], mileage=float("nan"))
    rows[6] = dict(rows[6], year="old")
    columns = list(rows[0])
    data: list[Any] = [[r[c] for c in columns] for r in rows]

    def send(prefix: str, **kwargs: Any) -> dict[str, Any]:
        ids = [f"{prefix}{i}" for i in range(len(kwargs.get("rows") or kwargs["data"]))]
        return app.send_task("predq.predict_batch", kwargs={  # type: ignore[no-any-return]
            "request_ids": ids, "request_time": WHEN, **kwargs}).get(timeout=90)

    with running_workers(env, tmp_path, app=app):
        # A model's first batch is predicted by sklearn, to check the fast path against
        # (workers/fastpath.py); the two can differ in the last bit, so warm it first.
        send("w-", rows=rows)
        by_rows = send("d-", rows=rows)
        by_columns = send("c-", columns=columns, data=data)
        quiet = send("q-", columns=columns, data=data, return_results=False)
        bad_row = send("s-", columns=columns, data=[*data[:2], data[2][:-1]])
    assert by_columns["model_version"] == by_rows["model_version"] == "v1"
    assert without_prefix(by_columns["results"], "c-") == without_prefix(
        by_rows["results"], "d-")
    errors = [r["error"] for r in by_rows["results"] if "error" in r]
    assert errors[0].startswith("rows[3].features.mileage: must be a finite number")
    assert errors[1].startswith("rows[6].features.year: ")
    assert quiet == {"model_version": "v1", "model_sha256": by_rows["model_sha256"],
                     "count": 8, "errors": [
                         {"index": i, "request_id": f"q-{i}",
                          "error": by_rows["results"][i]["error"]} for i in (3, 6)]}
    assert bad_row["results"][2]["error"] == (
        f"rows[2]: {len(columns) - 1} values, expected {len(columns)} (one per column)")
    assert [r["request_id"] for r in bad_row["results"][:2]] == ["s-0", "s-1"]
    dict_log = logged(pg_url, "d-")
    assert len(dict_log) == 8
    assert logged(pg_url, "c-") == dict_log == logged(pg_url, "q-")
