"""Worker metrics end to end: a real worker subprocess serves /metrics on PREDQ_METRICS_PORT;
the served, logged and batch metrics move by what was sent, and a promote moves the
generation, version, lag and load metrics. A prefork worker aggregates its children."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelstore.settings import Settings
from producer.client import PredqClient
from tests.support import models
from tests.support.workerproc import client_app, running_workers, worker_env

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
N = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def get(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value, 0 when absent (a counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def matching(samples: Samples, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of `name` whose labels include `labels` (e.g. one per pid)."""
    out = []
    for (n, labelset), v in samples.items():
        found = dict(labelset)
        if n == name and labels.items() <= found.items():
            out.append((found, v))
    return out


def scrape_when(port: int, ready: object, timeout: float = 30.0) -> Samples:
    """Scrape until `ready(samples)` holds or the timeout passes; returns the last scrape."""
    deadline = time.monotonic() + timeout
    samples: Samples = {}
    while time.monotonic() < deadline:
        try:
            samples = scrape(port)
        except (urllib.error.URLError, ConnectionError):
            samples = {}
        if samples and ready(samples):  # type: ignore[operator]
            break
        time.sleep(0.1)
    return samples


def predict(app: object, n: int, seed: int) -> list[dict[str, object]]:
    pending = [app.send_task("predq.predict", kwargs={"features": f})  # type: ignore[attr-defined]
               for f in models.rows(n, seed=seed)]
    return [p.get(timeout=60) for p in pending]


def test_metrics_move_as_predictions_flow_and_after_a_promote(
        pg_url: str, redis_url: str, tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    models.register(pg_url, "v2", offset=models.V2_OFFSET, promote=False)
    port = free_port()
    env = worker_env(pg_url, redis_url, tmp_path, PREDQ_METRICS_PORT=str(port))
    app = client_app(env)
    gen = "predq_serving_generation"
    with running_workers(env, tmp_path, app=app):
        before = scrape_when(port, lambda s: get(s, gen, model="default") == 1)
        assert get(before, gen, model="default") == 1  # warmed at start
        assert get(before, "predq_serving_version", model="default", version="v1") == 1
        assert get(before, "predq_model_load_seconds_count", model="default") == 1

        results = predict(app, N, seed=3)
        assert {r["model_version"] for r in results} == {"v1"}
        after = scrape(port)
        v1 = {"model": "default", "version": "v1"}
        served = "predq_predictions_served_total"
        assert get(after, served, **v1) - get(before, served, **v1) == N
        assert get(after, "predq_predictions_failed_total", **v1) == 0
        logged = "predq_predictions_logged_total"
        assert get(after, logged, destination="database", **v1) - get(
            before, logged, destination="database", **v1) == N
        batches = "predq_batch_size_rows_count"
        assert get(after, batches, model="default") > get(before, batches, model="default")
        assert get(after, "predq_batch_size_rows_sum", model="default") - get(
            before, "predq_batch_size_rows_sum", model="default") == N
        assert get(after, "predq_batch_seconds_count", model="default") == get(
            after, batches, model="default")

        with PredqClient(Settings.from_env(env)) as client:
            report = client.promote("v2", timeout=20)
        assert report.problem() is None
        promoted = scrape_when(port, lambda s: get(s, gen, model="default") == 2)
        assert get(promoted, gen, model="default") == 2
        assert get(promoted, "predq_serving_version", model="default", version="v2") == 1
        assert get(promoted, "predq_serving_version", model="default", version="v1") == 0
        lag = matching(promoted, "predq_promote_switch_lag_seconds", model="default")
        assert [(labels["generation"], v >= 0) for labels, v in lag] == [("2", True)]
        assert get(promoted, "predq_promote_switch_seconds_count", model="default") == 1
        assert get(promoted, "predq_model_load_seconds_count", model="default") == 2

        assert {r["model_version"] for r in predict(app, 10, seed=4)} == {"v2"}
        final = scrape(port)
        assert get(final, served, model="default", version="v2") == 10
        assert get(final, served, **v1) == get(after, served, **v1)


def test_prefork_worker_aggregates_its_children(pg_url: str, redis_url: str,
                                                tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    port = free_port()
    env = worker_env(pg_url, redis_url, tmp_path, PREDQ_METRICS_PORT=str(port))
    app = client_app(env)
    gen = "predq_serving_generation"
    with running_workers(env, tmp_path, app=app, pool="prefork", concurrency=2):
        # Each child warms at start: one generation series per process (pid label).
        warmed = scrape_when(port, lambda s: len(matching(s, gen, model="default")) == 2)
        assert [v for _, v in matching(warmed, gen, model="default")] == [1, 1]
        predict(app, 12, seed=5)
        served = scrape(port)
        assert get(served, "predq_predictions_served_total", model="default",
                   version="v1") == 12
