"""Invariant 5 on RabbitMQ: the fault suite's hostile inputs (tests/faults/hostile_cases.py)
through one AMQP worker. Each gets a clear error naming the field, valid edge inputs are
predicted, hand-made pickle / non-JSON / unknown-task messages are refused without being
deserialized, and the worker lives on with no garbage rows."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.faults.hostile_cases import CASES, GOOD, ROW_CAP, Case
from tests.faults.stack import marker_pickle, publish_raw
from tests.support import models
from tests.support.db import fetch
from tests.support.workerproc import client_app, running_workers, worker_env

pytestmark = pytest.mark.e2e


def errors_of(value: dict[str, Any]) -> list[str]:
    found = [str(value["error"])] if value.get("error") else []
    return found + [str(r["error"]) for r in value.get("results", [])
                    if isinstance(r, dict) and r.get("error")]


def send_raw(app: Any, case: Case, marker: Path) -> None:
    task_id = f"raw-{case.name}-{uuid.uuid4().hex[:8]}"
    if case.raw == "pickle":
        publish_raw(app, marker_pickle(marker), "application/x-python-serialize",
                    "predq.predict", task_id)
    elif case.raw == "not-json":
        publish_raw(app, b"{not json at all\xff", "application/json", "predq.predict",
                    task_id, content_encoding="utf-8")
    else:
        publish_raw(app, b'[[], {"features": {}}, {}]', "application/json", "predq.nope",
                    task_id, "utf-8")


def test_hostile_inputs_on_amqp(pg_url: str, amqp_url: str, redis_url: str,
                                tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    env = worker_env(pg_url, amqp_url, tmp_path, PREDQ_RESULT_BACKEND=redis_url,
                     PREDQ_MAX_ROWS_PER_TASK=str(ROW_CAP))
    app = client_app(env)
    marker = tmp_path / "PWNED-by-message"
    problems: list[str] = []
    expected: set[str] = set()
    with running_workers(env, tmp_path, names=("hostileamqp",), app=app) as (worker,):
        for case in CASES:
            if case.bug:
                continue  # a known product bug, xfailed in the fault suite
            if case.raw:
                send_raw(app, case, marker)
            else:
                try:
                    value = app.send_task(case.task, args=case.args,
                                          kwargs=case.kwargs).get(timeout=60)
                except Exception as exc:  # noqa: BLE001 - the measured outcome
                    value = {"error": f"raised {type(exc).__name__}: {exc}"}
                text = " ".join(errors_of(value)).lower()
                missing = [m for m in case.mentions if m.lower() not in text]
                if missing or (not case.mentions and text):
                    problems.append(f"{case.name}: {missing or 'refused'}: {text[:200]}")
            expected.update(case.logged)
            probe = f"probe-{case.name}"
            healthy = app.send_task("predq.predict", kwargs={
                "features": GOOD[1], "request_id": probe}).get(timeout=60)
            if "prediction" not in healthy:
                problems.append(f"after {case.name}: next good request got {healthy}")
            expected.add(probe)
        assert worker.proc is not None and worker.proc.poll() is None, "the worker died"
        log = worker.log_tail(10**7)
    rows = [str(r[0]) for r in fetch(pg_url, "SELECT request_id FROM model_predictions")]
    assert not problems, problems
    assert not marker.exists(), "a pickle from the queue was deserialized"
    assert "Refusing to deserialize untrusted content" in log
    assert "Received unregistered task of type 'predq.nope'" in log
    assert sorted(rows) == sorted(expected), set(rows) ^ expected
