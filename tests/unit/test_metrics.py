"""workers.metrics: what each record function moves, the /metrics endpoint, port 0, and the
prefork (multiprocess directory) aggregation across forked processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelstore.db import ModelEvaluationDB
from modelstore.errors import ConfigError
from modelstore.settings import Settings
from workers import metrics

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[metrics.PredqMetrics]:
    """A new metrics object for this test (the module keeps one per process)."""
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    m = metrics.PredqMetrics()
    monkeypatch.setattr(metrics, "_metrics", m)
    yield m
    metrics.stop_server()


def value(m: metrics.PredqMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_batch_counts_served_failed_and_histograms(fresh: metrics.PredqMetrics) -> None:
    metrics.observe_batch("default", "v1", size=5, failed=2, seconds=0.004)
    metrics.observe_batch("default", "v1", size=1, failed=0, seconds=0.2)
    metrics.observe_batch("default", None, size=3, failed=3, seconds=0.001)
    mv = {"model": "default", "version": "v1"}
    assert value(fresh, "predq_predictions_served_total", **mv) == 4
    assert value(fresh, "predq_predictions_failed_total", **mv) == 2
    assert value(fresh, "predq_predictions_failed_total", model="default",
                 version="unknown") == 3
    assert value(fresh, "predq_batch_size_rows_count", model="default") == 3
    assert value(fresh, "predq_batch_size_rows_sum", model="default") == 9
    assert value(fresh, "predq_batch_size_rows_bucket", model="default", le="4.0") == 2
    assert value(fresh, "predq_batch_seconds_bucket", model="default", le="0.005") == 2
    assert value(fresh, "predq_batch_seconds_count", model="default") == 3


def test_writes_by_model_version_and_destination(fresh: metrics.PredqMetrics) -> None:
    rows = [{"model_name": "a", "model_version": "v1"}] * 3 + [
        {"model_name": "b", "model_version": "v9"}]
    metrics.observe_write(rows, spooled=False)
    metrics.observe_write(rows[:1], spooled=True)
    metrics.observe_replay(7)
    metrics.observe_replay(0)
    metrics.set_spool_depth(12)
    logged = "predq_predictions_logged_total"
    assert value(fresh, logged, model="a", version="v1", destination="database") == 3
    assert value(fresh, logged, model="b", version="v9", destination="database") == 1
    assert value(fresh, logged, model="a", version="v1", destination="spool") == 1
    assert value(fresh, "predq_spool_replayed_rows_total") == 7
    assert value(fresh, "predq_spool_depth_rows") == 12


def test_switch_sets_generation_version_lag_and_load(fresh: metrics.PredqMetrics) -> None:
    metrics.observe_switch("default", 1, None, 0.3, "v1")  # first load: no promote lag
    assert value(fresh, "predq_serving_generation", model="default") == 1
    assert value(fresh, "predq_serving_version", model="default", version="v1") == 1
    assert value(fresh, "predq_promote_switch_seconds_count", model="default") is None
    metrics.observe_switch("default", 2, 0.25, 0.05, "v2")
    assert value(fresh, "predq_serving_generation", model="default") == 2
    assert value(fresh, "predq_serving_version", model="default", version="v1") == 0
    assert value(fresh, "predq_serving_version", model="default", version="v2") == 1
    assert value(fresh, "predq_promote_switch_lag_seconds", model="default",
                 generation="2") == 0.25
    assert value(fresh, "predq_promote_switch_seconds_count", model="default") == 1
    assert value(fresh, "predq_model_load_seconds_count", model="default") == 2
    assert value(fresh, "predq_model_load_seconds_sum", model="default") == pytest.approx(0.35)


def test_lag_series_are_bounded_per_model(fresh: metrics.PredqMetrics) -> None:
    total = metrics.KEEP_LAG_GENERATIONS + 3
    for g in range(1, total + 1):
        metrics.observe_switch("m", g, g / 100, None, f"v{g}")
    lag = "predq_promote_switch_lag_seconds"
    assert value(fresh, lag, model="m", generation="1") is None
    assert value(fresh, lag, model="m", generation=str(total)) == total / 100
    kept = [g for g in range(1, total + 1)
            if value(fresh, lag, model="m", generation=str(g)) is not None]
    assert len(kept) == metrics.KEEP_LAG_GENERATIONS


def test_endpoint_serves_the_text_format_and_port_zero_is_off(
        fresh: metrics.PredqMetrics) -> None:
    assert metrics.start_server(0) is False
    port = free_port()
    assert metrics.start_server(port, addr="127.0.0.1") is True
    assert metrics.start_server(port, addr="127.0.0.1") is True  # once per process
    metrics.observe_batch("default", "v1", 2, 0, 0.01)
    metrics.observe_gate("default", "v1", 3.5)
    metrics.observe_gate_rollback("default")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        body = reply.read().decode()
    assert 'predq_predictions_served_total{model="default",version="v1"} 2.0' in body
    assert 'predq_quality_gate_mae{model="default",version="v1"} 3.5' in body
    assert 'predq_quality_gate_rollbacks_total{model="default"} 1.0' in body


def test_port_taken_is_logged_not_raised(fresh: metrics.PredqMetrics,
                                         caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert metrics.start_server(busy.getsockname()[1], addr="127.0.0.1") is False
    assert "metrics endpoint not started" in caplog.text


def test_settings_metrics_port_and_quality_gate() -> None:
    assert Settings.from_env({}).metrics_port == 9808
    assert Settings.from_env({"PREDQ_METRICS_PORT": "0"}).metrics_port == 0
    with pytest.raises(ConfigError, match="PREDQ_METRICS_PORT"):
        Settings.from_env({"PREDQ_METRICS_PORT": "70000"})
    off = Settings.from_env({})
    assert off.quality_gate_margin is None and off.quality_gate_min_rows == 200
    on = Settings.from_env({"PREDQ_QUALITY_GATE_MARGIN": "0.1",
                            "PREDQ_QUALITY_GATE_MIN_ROWS": "50",
                            "PREDQ_QUALITY_GATE_MODELS": "default, churn"})
    assert on.quality_gate_margin == 0.1 and on.quality_gate_min_rows == 50
    assert on.quality_gate_models == ("default", "churn")
    with pytest.raises(ConfigError, match="PREDQ_QUALITY_GATE_MARGIN"):
        Settings.from_env({"PREDQ_QUALITY_GATE_MARGIN": "ten percent"})


PREFORK_SCRIPT = textwrap.dedent("""
    import os, sys
    from workers import metrics
    path = metrics.prepare_prefork()   # the worker's main process, before the pool forks
    assert path and os.environ["PROMETHEUS_MULTIPROC_DIR"] == path
    children = []
    for generation in (1, 2):
        pid = os.fork()
        if pid == 0:
            metrics.observe_batch("default", "v1", 10, 1, 0.01)
            metrics.observe_switch("default", generation, None, 0.1, "v1")
            os._exit(0)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    from prometheus_client import generate_latest
    sys.stdout.write(generate_latest(metrics.exposition_registry()).decode())
    metrics.process_exit()
""")


def test_prefork_children_are_aggregated_through_the_multiprocess_dir(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != metrics.MULTIPROC_ENV}
    env.update(PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", PREFORK_SCRIPT], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert 'predq_predictions_served_total{model="default",version="v1"} 18.0' in out
    assert 'predq_batch_size_rows_count{model="default"} 2.0' in out
    generations = sorted(line.rsplit(" ", 1)[1] for line in out.splitlines()
                         if line.startswith("predq_serving_generation{"))
    assert generations == ["1.0", "2.0"]  # one series per process (pid label)


def test_promote_lag_is_measured_on_the_database_clock(sqlite_url: str) -> None:
    db = ModelEvaluationDB(sqlite_url)
    db.store_model("run-1", "v1", "Dummy", b"one", describe=False, is_production=True)
    db.store_model("run-2", "v2", "Dummy", b"two", describe=False)
    generation = db.set_production_model("v2").generation
    lag = metrics.promote_lag(db.engine, "default", generation, None)
    assert lag is not None and 0 <= lag < 600
    # A generation the pointer no longer holds: the broadcast's time, or nothing.
    assert metrics.promote_lag(db.engine, "default", generation + 1, None) is None
    fallback = metrics.promote_lag(db.engine, "default", generation + 1, 0.0)
    assert fallback is not None and fallback > 1e9  # seconds since the epoch
