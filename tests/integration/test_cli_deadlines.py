"""No `predq` command can hang: a service that accepts TCP but never answers (Redis, AMQP,
Postgres) costs the connect timeout, and the one-line error names that service.

Each command runs as its own process (`python -m producer.cli`); the bound is the
command's own timeout (or PREDQ_CONNECT_TIMEOUT) plus 5 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.silent import silent_listener

pytestmark = [pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT_S = 2
MARGIN_S = 5.0


@pytest.fixture
def startup_s() -> float:
    """Twice what `predq --version` costs right now on this shared, loaded machine: the
    interpreter's imports, not waiting (load moves it by seconds between two runs)."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "producer.cli", "--version"], check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return 2 * (time.monotonic() - started)


def run_bounded(env: dict[str, str], bound_s: float, *args: str) -> tuple[float, str]:
    """Run predq; return (seconds, stderr) after asserting a non-zero exit."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "producer.cli", *args], env=env,
                          capture_output=True, text=True, timeout=bound_s + 60)
    elapsed = time.monotonic() - started
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert elapsed <= bound_s, f"predq {' '.join(args)} took {elapsed:.1f} s: {done.stderr}"
    return elapsed, done.stderr


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREDQ_") and k != "DATABASE_URL"}
    env.update({"PYTHONPATH": str(ROOT), "PREDQ_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S),
                "PREDQ_MODEL_DIR": str(tmp_path / "models"),
                "DATABASE_URL": f"sqlite:///{tmp_path / 'predq.db'}"})
    env.update(extra)
    return env


@pytest.mark.parametrize("command", [
    ("predict", '{"x": 1}', "--timeout", "3"),
    ("serving", "--timeout", "1"),
    ("backfill", "{csv}", "--timeout", "5"),
])
def test_silent_redis_broker(tmp_path: Path, startup_s: float, command: tuple[str, ...]) -> None:
    csv = tmp_path / "actuals.csv"
    csv.write_text("request_id,actual_value\nr1,1.5\n")
    args = [a.replace("{csv}", str(csv)) for a in command]
    own = float(args[args.index("--timeout") + 1])
    with silent_listener() as port:
        url = f"redis://127.0.0.1:{port}/7"
        env = base_env(tmp_path, PREDQ_BROKER_URL=url, PREDQ_RESULT_BACKEND=url)
        _, err = run_bounded(env, max(own, CONNECT_TIMEOUT_S) + MARGIN_S + startup_s, *args)
    assert f"broker redis://127.0.0.1:{port}/7 unreachable" in err


def test_silent_amqp_broker(tmp_path: Path, redis_url: str, startup_s: float) -> None:
    with silent_listener() as port:
        env = base_env(tmp_path, PREDQ_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{port}//",
                       PREDQ_RESULT_BACKEND=redis_url)
        _, err = run_bounded(env, 3 + MARGIN_S + startup_s, "predict", '{"x": 1}', "--timeout", "3")
    assert f"broker amqp://guest:***@127.0.0.1:{port}// unreachable" in err


def test_silent_redis_result_backend(tmp_path: Path, redis_url: str, startup_s: float) -> None:
    with silent_listener() as port:
        env = base_env(tmp_path, PREDQ_BROKER_URL=redis_url,
                       PREDQ_RESULT_BACKEND=f"redis://127.0.0.1:{port}/3")
        _, err = run_bounded(env, 3 + MARGIN_S + startup_s, "predict", '{"x": 1}', "--timeout", "3")
    assert f"result backend redis://127.0.0.1:{port}/3 unreachable" in err


@pytest.mark.parametrize("command", [("models",), ("promote", "v1", "--timeout", "2")])
def test_silent_postgres(tmp_path: Path, startup_s: float, command: tuple[str, ...]) -> None:
    with silent_listener() as port:
        env = base_env(tmp_path, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/x")
        _, err = run_bounded(env, CONNECT_TIMEOUT_S + MARGIN_S + startup_s, *command)
    assert "database unavailable" in err and f"127.0.0.1:{port}" in err


def test_no_worker_consuming_is_said_up_front(tmp_path: Path, redis_url: str,
                                              startup_s: float) -> None:
    env = base_env(tmp_path, PREDQ_BROKER_URL=redis_url, PREDQ_RESULT_BACKEND=redis_url)
    _, err = run_bounded(env, 3 + MARGIN_S + startup_s, "predict", '{"x": 1}',
                         "--timeout", "3")
    first = " ".join(err.split())  # rich folds the warning
    assert "no predq worker answered within 1 s" in first
    assert first.index("no predq worker answered") < first.index("no result within 3 s")
