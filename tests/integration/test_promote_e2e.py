"""Invariants 1 and 2 under load: version truth and convergence after a promote."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from modelstore import ModelEvaluationDB
from tests.support import models
from tests.support.db import fetch
from tests.support.rabbit import Broker
from tests.support.workerproc import WorkerProcess, client_app, running_workers, worker_env

pytestmark = pytest.mark.e2e

SWITCH_DEADLINE_S = 1.0


def serving_versions(app: Celery, nodes: int | None = None
                     ) -> dict[tuple[str, int], str | None]:
    """(node, pid) -> the default model's version, from every replying node.

    With `nodes`, return as soon as that many replied instead of waiting out the timeout.
    """
    out: dict[tuple[str, int], str | None] = {}
    for reply in app.control.broadcast("predq_serving", reply=True, timeout=0.5, limit=nodes):
        for node, body in reply.items():
            for proc in body["processes"]:
                out[(node, proc["pid"])] = proc["models"].get("default", {}).get(
                    "model_version")
    return out


def stream(app: Celery, feats: list[dict[str, Any]], results: list[dict[str, Any]],
           stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        batch = [app.send_task("predq.predict", kwargs={"features": feats[(i + k) % len(feats)],
                                                        "request_id": f"load-{i + k}"})
                 for k in range(20)]
        results.extend(p.get(timeout=60) for p in batch)
        i += 20


def logged(url: str) -> list[tuple[str, str, float]]:
    return [(str(r[0]), str(r[1]), float(r[2])) for r in fetch(
        url, "SELECT request_id, model_version, predicted_value FROM model_predictions")]

def promote_and_wait(app: Celery, url: str, version: str, nodes: int) -> float:
    """Promote, broadcast, and return seconds until every process serves `version`."""
    started = time.monotonic()
    result = ModelEvaluationDB(url).set_production_model(version, reason="e2e test")
    app.control.broadcast("predq_promote", reply=False, arguments={
        "model": "default", "generation": result.generation, "promoted_at": time.time()})
    deadline = started + 10
    while time.monotonic() < deadline:
        seen = serving_versions(app, nodes)
        if len(seen) >= nodes and set(seen.values()) == {version}:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"not every process switched to {version}: {serving_versions(app)}")


def test_promote_under_load_switches_every_process_and_keeps_version_truth(
        pg_url: str, broker: Broker, tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    models.register(pg_url, "v2", offset=models.V2_OFFSET, promote=False)
    # A long poll interval: the switch must come from the broadcast, not the poll.
    env = worker_env(pg_url, broker.url, tmp_path, **broker.env(), PREDQ_GENERATION_POLL="30")
    app = client_app(env)
    feats = models.rows(200)
    results: list[dict[str, Any]] = []
    stop = threading.Event()
    with running_workers(env, tmp_path, names=("w1", "w2"), app=app, concurrency=16):
        before = serving_versions(app)
        assert len(before) == 2 and set(before.values()) == {"v1"}, before
        loader = threading.Thread(target=stream, args=(app, feats, results, stop))
        loader.start()
        try:
            time.sleep(1.0)
            switch_s = promote_and_wait(app, pg_url, "v2", nodes=2)
            time.sleep(1.0)
        finally:
            stop.set()
            loader.join(timeout=60)
    assert switch_s <= SWITCH_DEADLINE_S, f"switch took {switch_s:.2f}s"
    versions = {r["model_version"] for r in results}
    assert versions == {"v1", "v2"}, versions
    for r in results:  # a result's version is the model that computed it
        assert models.is_v2(r["prediction"]) == (r["model_version"] == "v2"), r
    rows = logged(pg_url)
    assert len(rows) == len({rid for rid, _, _ in rows}) >= len(results)
    for rid, version, value in rows:
        assert models.is_v2(value) == (version == "v2"), (rid, version, value)


def test_missed_broadcast_converges_by_polling(pg_url: str, redis_url: str,
                                               tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    models.register(pg_url, "v2", offset=models.V2_OFFSET, promote=False)
    env = worker_env(pg_url, redis_url, tmp_path, PREDQ_GENERATION_POLL="0.5")
    app = client_app(env)
    with running_workers(env, tmp_path, names=("w1",), app=app):
        ModelEvaluationDB(pg_url).set_production_model("v2")  # no broadcast at all
        deadline = time.monotonic() + 10
        while set(serving_versions(app).values()) != {"v2"} and time.monotonic() < deadline:
            time.sleep(0.1)
        result = app.send_task("predq.predict",
                               kwargs={"features": models.rows(1)[0]}).get(timeout=30)
    assert result["model_version"] == "v2" and models.is_v2(result["prediction"])


def test_worker_started_after_promote_serves_new_version_first(
        pg_url: str, redis_url: str, tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    models.register(pg_url, "v2", offset=models.V2_OFFSET, promote=False)
    ModelEvaluationDB(pg_url).set_production_model("v2")  # no worker is up to hear it
    env = worker_env(pg_url, redis_url, tmp_path)
    app = client_app(env)
    late = WorkerProcess(env, "late", tmp_path / "late.log")
    try:
        late.start()
        late.wait_ready(app)
        first = app.send_task("predq.predict",
                              kwargs={"features": models.rows(1)[0]}).get(timeout=30)
    finally:
        late.stop()
    assert first["model_version"] == "v2"
    assert models.is_v2(first["prediction"])


def test_prefork_children_converge_through_the_shared_signal(
        pg_url: str, broker: Broker, tmp_path: Path) -> None:
    """Remote control reaches only the main process; children must follow the signal (on
    RabbitMQ it lives in the Redis result backend)."""
    models.register(pg_url, "v1")
    models.register(pg_url, "v2", offset=models.V2_OFFSET, promote=False)
    env = worker_env(pg_url, broker.url, tmp_path, **broker.env(), PREDQ_GENERATION_POLL="60")
    app = client_app(env)
    feats = models.rows(40)
    with running_workers(env, tmp_path, names=("pf",), app=app, concurrency=2, pool="prefork"):
        warm = [app.send_task("predq.predict", kwargs={"features": f}) for f in feats]
        assert {p.get(timeout=60)["model_version"] for p in warm} == {"v1"}
        result = ModelEvaluationDB(pg_url).set_production_model("v2")
        app.control.broadcast("predq_promote", reply=True, timeout=1, arguments={
            "model": "default", "generation": result.generation})
        time.sleep(1.0)
        after = [app.send_task("predq.predict", kwargs={"features": f}) for f in feats]
        versions = [p.get(timeout=60)["model_version"] for p in after]
    assert set(versions) == {"v2"}, versions
