"""The producer never imports the worker code, and importing it creates no Celery app and
opens no connection (checked in a fresh interpreter: other tests may import workers)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import producer, producer.cli, producer.cli_ops, producer.cli_register, producer.demo
import producer.client, producer.testing, producer.fs_transport, producer.worker_procs
from celery import _state
loaded = sorted(m for m in sys.modules if m == "workers" or m.startswith("workers."))
assert not loaded, f"producer imported {loaded}"
assert not list(_state._apps), f"Celery apps created at import: {list(_state._apps)}"
print("ok")
"""


def test_producer_imports_no_worker_module_and_builds_no_app() -> None:
    env = {"PREDQ_BROKER_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": "postgresql://x@127.0.0.1:1/x",
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
