"""Settings a user can get wrong end in one line naming the setting, never a traceback;
`predq --version` works. Each command runs as its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def predq(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("PREDQ_") and k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "producer.cli", *args],
                          env={**base, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=120)


def test_version() -> None:
    done = predq("--version")
    assert done.returncode == 0 and done.stdout.strip() == "predq 0.1.0"


@pytest.mark.parametrize(("env", "message"), [
    ({"DATABASE_URL": "notaurl"}, "DATABASE_URL: unsupported database URL 'notaurl'; "
                                  "expected postgresql://"),
    ({"DATABASE_URL": "mysql://me:secret@db/x"}, "DATABASE_URL: unsupported database URL "
                                                 "'mysql://***@db/x'"),
    ({"DATABASE_URL": "postgresql://me@db:port/x"}, "DATABASE_URL: malformed URL"),
    ({"PREDQ_BROKER_URL": "http://localhost"}, "PREDQ_BROKER_URL: unsupported broker URL "
                                               "'http://localhost'"),
])
def test_a_bad_url_is_one_line_naming_the_setting(env: dict[str, str], message: str) -> None:
    done = predq("models", **env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "secret" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {message}"), done.stderr
