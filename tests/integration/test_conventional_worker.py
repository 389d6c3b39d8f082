"""`python -m celery -A workers worker` with no pool flag is predq's recommended setup (the
threads pool, PREDQ_WORKER_THREADS threads), and an explicit prefork still gets prefork
(issue 12, item 8). Real worker subprocesses, real Postgres and Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelstore.settings import Settings
from tests.support import models
from tests.support.workerproc import client_app, running_workers, worker_env
from workers.celeryapp import pool_config

pytestmark = pytest.mark.e2e


def pool_of(app: object, nodename: str) -> dict[str, object]:
    stats = app.control.inspect([nodename], timeout=5).stats() or {}  # type: ignore[attr-defined]
    return stats[nodename]["pool"]


def test_the_bare_command_serves_through_the_threads_pool(pg_url: str, redis_url: str,
                                                           tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    env = worker_env(pg_url, redis_url, tmp_path, PREDQ_WORKER_THREADS="12")
    app = client_app(env)
    with running_workers(env, tmp_path, app=app, pool=None) as workers:
        assert "--pool" not in workers[0].args and "--concurrency" not in workers[0].args
        pool = pool_of(app, workers[0].nodename)
        result = app.send_task("predq.predict",
                               kwargs={"features": models.rows(1)[0]}).get(timeout=60)
    assert pool["implementation"] == "celery.concurrency.thread:TaskPool"
    assert pool["max-concurrency"] == 12
    assert result["model_version"] == "v1"


def test_an_explicit_prefork_pool_is_still_prefork(pg_url: str, redis_url: str,
                                                   tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    env = worker_env(pg_url, redis_url, tmp_path)
    app = client_app(env)
    with running_workers(env, tmp_path, app=app, pool="prefork", concurrency=1) as workers:
        pool = pool_of(app, workers[0].nodename)
        result = app.send_task("predq.predict",
                               kwargs={"features": models.rows(1)[0]}).get(timeout=60)
    assert pool["implementation"] == "celery.concurrency.prefork:TaskPool"
    assert pool["max-concurrency"] == 1
    assert result["model_version"] == "v1"


@pytest.mark.parametrize("argv", [["--pool", "prefork"], ["-P", "solo"], ["--pool=threads"],
                                  ["-Pprefork"]])
def test_a_pool_named_on_the_command_line_is_left_to_celery(argv: list[str]) -> None:
    assert pool_config(Settings(), ["celery", "-A", "workers", "worker", *argv]) == {}


def test_without_a_pool_flag_the_app_config_names_threads() -> None:
    config = pool_config(Settings(worker_threads=7), ["celery", "-A", "workers", "worker"])
    assert config == {"worker_pool": "threads", "worker_concurrency": 7}
