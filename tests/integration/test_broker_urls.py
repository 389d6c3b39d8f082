"""The other supported broker/backend combinations end to end: RabbitMQ with results in
Postgres (`db+postgresql://`), and Redis reached through Sentinel (a private redis-server
and a sentinel started here with `redis-server --sentinel`)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
import redis

from modelstore.settings import Settings
from producer.client import PredqClient
from tests.conftest import fresh_database, unavailable
from tests.faults.redisproc import RedisServer
from tests.faults.tcpproxy import free_port
from tests.support import models
from tests.support.workerproc import running_workers, worker_env

pytestmark = pytest.mark.e2e

MASTER = "predqmaster"


def test_amqp_with_results_in_postgres(pg_url: str, pg_admin: object, amqp_url: str,
                                       tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    models.register(pg_url, "v2", offset=models.V2_OFFSET, promote=False)
    results = fresh_database(pg_admin)
    backend = "db+" + next(results).replace("+psycopg2", "")  # as a user writes it
    try:
        env = worker_env(pg_url, amqp_url, tmp_path, PREDQ_RESULT_BACKEND=backend)
        with running_workers(env, tmp_path, names=("pgresults",)), \
                PredqClient(Settings.from_env(env)) as client:
            one = client.predict(models.rows(1)[0], timeout=60)
            many = client.predict_many(models.rows(30), chunk_size=10, timeout=60)
            report = client.promote("v2", timeout=10)
            after = client.predict(models.rows(1)[0], timeout=60)
    finally:
        results.close()
    assert one["model_version"] == "v1" and len(many) == 30
    assert all(r["model_version"] == "v1" and "prediction" in r for r in many)
    assert report.ok, report.problem()
    assert after["model_version"] == "v2" and models.is_v2(after["prediction"])


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[RedisServer, int]]:
    """A private master and one sentinel watching it as MASTER."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server (for a sentinel)", FileNotFoundError("redis-server"))
    master = RedisServer(tmp_path / "master").start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 1\n")
    proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        probe = redis.Redis(port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            with suppress(redis.RedisError):
                if probe.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER):
                    break
            assert time.monotonic() < deadline, "the sentinel never answered"
            time.sleep(0.1)
        probe.close()
        yield master, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        master.stop()


def test_redis_through_sentinel(pg_url: str, sentinel: tuple[RedisServer, int],
                                tmp_path: Path) -> None:
    master, port = sentinel
    models.register(pg_url, "v1")
    models.register(pg_url, "v2", offset=models.V2_OFFSET, promote=False)
    env = worker_env(pg_url, f"sentinel://127.0.0.1:{port}/0;sentinel://127.0.0.1:{port}/0",
                     tmp_path, PREDQ_RESULT_BACKEND=f"sentinel://127.0.0.1:{port}/1",
                     PREDQ_SENTINEL_MASTER=MASTER)
    with running_workers(env, tmp_path, names=("sentinel",)), \
            PredqClient(Settings.from_env(env)) as client:
        one = client.predict(models.rows(1)[0], timeout=60)
        report = client.promote("v2", timeout=10)
        after = client.predict(models.rows(1)[0], timeout=60)
    assert one["model_version"] == "v1"
    assert report.ok, report.problem()
    assert after["model_version"] == "v2"
    assert master.client(1).keys("celery-task-meta-*"), "results went to the master"
