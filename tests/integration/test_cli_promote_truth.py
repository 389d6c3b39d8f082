"""`predq promote` says exactly what happened: with the broker down the database still
moves, and the command says so with exit 4; promoting the version already in production
changes nothing and says so. Each command runs as its own process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from modelstore import ModelEvaluationDB
from tests.support.models import register

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def predq(pg_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    broker = f"redis://127.0.0.1:{closed_port()}/5"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREDQ_") and k != "DATABASE_URL"}
    env.update({"DATABASE_URL": pg_url, "PREDQ_BROKER_URL": broker,
                "PREDQ_RESULT_BACKEND": broker, "PREDQ_CONNECT_TIMEOUT": "2",
                "PREDQ_MODEL_DIR": str(tmp_path / "models"), "PYTHONPATH": str(ROOT)})
    return subprocess.run([sys.executable, "-m", "producer.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_promote_with_broker_down_moves_the_database_and_says_so(
        pg_url: str, tmp_path: Path) -> None:
    register(pg_url, "v1")
    register(pg_url, "v2", offset=1_000_000.0, promote=False)
    done = predq(pg_url, tmp_path, "promote", "v2", "--timeout", "2")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "promoted to 'v2' (generation 2) in the database, but the broadcast failed" \
        in done.stderr
    assert "unreachable" in done.stderr and "PREDQ_GENERATION_POLL" in done.stderr
    with ModelEvaluationDB(pg_url) as db:
        pointer = db.production_pointer()
    assert pointer is not None and (pointer.model_version, pointer.generation) == ("v2", 2)
    assert "4 the database moved but the" in predq(pg_url, tmp_path, "promote",
                                                   "--help").stdout


def test_promote_current_version_is_a_no_op(pg_url: str, tmp_path: Path) -> None:
    register(pg_url, "v1")
    with ModelEvaluationDB(pg_url) as db:
        before = (db.production_pointer(), db.promotion_history(limit=50))
    done = predq(pg_url, tmp_path, "promote", "v1")
    # Nothing to broadcast either: the unreachable broker is never contacted.
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already serves 'v1' in production (generation 1): nothing changed" in done.stdout
    with ModelEvaluationDB(pg_url) as db:
        after = (db.production_pointer(), db.promotion_history(limit=50))
    assert after == before
