"""Invariant 3: a SIGKILLed worker loses no prediction and duplicates none."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.support import models
from tests.support.db import fetch
from tests.support.rabbit import Broker
from tests.support.workerproc import WorkerProcess, client_app, worker_env

pytestmark = pytest.mark.e2e

TASKS = 2_000


def counts(url: str) -> tuple[int, int]:
    total, distinct = fetch(url, "SELECT count(*), count(DISTINCT request_id) "
                                 "FROM model_predictions")[0]
    return int(total), int(distinct)


def logged_ids(url: str) -> set[str]:
    return {str(r[0]) for r in fetch(url, "SELECT request_id FROM model_predictions")}

def wait_for_rows(url: str, at_least: int, timeout: float) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    found = counts(url)
    while found[0] < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
        found = counts(url)
    return found


def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(
        pg_url: str, broker: Broker, tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    env = worker_env(pg_url, broker.url, tmp_path, **broker.env(), PREDQ_VISIBILITY_TIMEOUT="5")
    app = client_app(env)
    feats = models.rows(TASKS)
    first = WorkerProcess(env, "victim", tmp_path / "victim.log", concurrency=16)
    second = WorkerProcess(env, "survivor", tmp_path / "survivor.log", concurrency=16)
    try:
        first.start()
        first.wait_ready(app)
        # Sent from a thread: a confirmed AMQP publish is slow enough under load that the
        # worker would otherwise finish every task before the kill.
        sender = threading.Thread(target=lambda: [app.send_task(
            "predq.predict", kwargs={"features": f, "request_id": f"kill-{i}"},
            ignore_result=True) for i, f in enumerate(feats)])
        sender.start()
        try:
            before_kill = wait_for_rows(pg_url, TASKS // 4, timeout=60)[0]
            first.kill()
        finally:
            sender.join(timeout=300)
        assert 0 < before_kill < TASKS, "the kill must land mid-stream"
        second.start()
        second.wait_ready(app)
        total, distinct = wait_for_rows(pg_url, TASKS, timeout=120)
    finally:
        first.stop()
        second.stop()
    missing = sorted(set(f"kill-{i}" for i in range(TASKS)) - logged_ids(pg_url))
    assert total == distinct == TASKS, (
        f"after SIGKILL at {before_kill} rows: {total} rows, {distinct} distinct, want {TASKS}; "
        f"missing {missing[:10]}; victim log mentions: "
        f"{[m for m in missing if m in first.log_tail(10**7)]}")
