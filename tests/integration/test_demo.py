"""`predq demo` with no services configured: SQLite, a filesystem broker, two real workers.

It must exit 0, print the per-version report, leave both versions predicted and labelled
in its SQLite store, and leave no worker process behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelstore.db import ModelEvaluationDB
from modelstore.engine import dispose_engines

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_whole_loop_without_services(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREDQ_") and k != "DATABASE_URL"}
    workdir = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "producer.cli", "demo", "--dir", str(workdir),
                           "--rows", "600"], env={**env, "COLUMNS": "200", "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "mode: embedded (no services)" in out
    assert "Per-version report" in out and "demo finished" in out
    assert "2/2 serving process(es) on 2 node(s) confirmed" in out

    db = ModelEvaluationDB(f"sqlite:///{workdir / 'predq.db'}")
    try:
        stats = db.prediction_stats("default")
        history = db.promotion_history("default")
    finally:
        dispose_engines()
    assert len(stats) == 2
    for row in stats:
        assert row["labelled"] == 600 and row["mae"] is not None
    assert [h["action"] for h in history][:1] == ["promote"]

    pids = {int(p) for p in re.findall(r"demo[12]@\S+\s+│\s+(\d+)", out)}
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
