"""A prefork worker confirms a promote: its main process answers the broadcast with what
each pool child serves (the children's status board), driven through `predq promote`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import models
from tests.support.workerproc import client_app, running_workers, worker_env

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]


def predq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "producer.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_prefork_children_confirm_a_promote(pg_url: str, redis_url: str,
                                            tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    models.register(pg_url, "v2", offset=models.V2_OFFSET, promote=False)
    env = {**worker_env(pg_url, redis_url, tmp_path), "COLUMNS": "200"}
    app = client_app(env)
    with running_workers(env, tmp_path, names=("pf",), app=app, concurrency=2,
                         pool="prefork"):
        before = predq(env, "serving", "--json", "--timeout", "2")
        rows = json.loads(before.stdout)
        assert len({r["pid"] for r in rows}) == 2, before.stdout + before.stderr
        done = predq(env, "promote", "v2", "--timeout", "30")
        after = json.loads(predq(env, "serving", "--json", "--timeout", "2").stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2/2 serving process(es) on 1 node(s) confirmed" in done.stdout, done.stdout
    assert {(r["model"], r["version"]) for r in after} == {("default", "v2")}
