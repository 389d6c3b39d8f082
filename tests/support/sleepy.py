"""A model whose predict sleeps: a slow but live task, for the takeover tests.

Each call appends "start <pid>" and, after the sleep, "done <pid>" to the file named by
SLEEPY_CALLS_ENV in the worker's environment, so a test counts how often a task really ran.
SLEEPY_SECONDS_ENV in a worker's environment overrides the sleep, so one host can be slow.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from modelstore import ModelEvaluationDB
from modelstore.artifacts import serialize
from tests.support.models import small_model

SLEEPY_CALLS_ENV = "PREDQ_TEST_SLEEPY_CALLS"
SLEEPY_SECONDS_ENV = "PREDQ_TEST_SLEEPY_SECONDS"


class SleepyModel:
    """Delegates to a small pipeline after sleeping `seconds` per predict call."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds

    def predict(self, frame: Any) -> Any:
        _mark("start")
        time.sleep(float(os.environ.get(SLEEPY_SECONDS_ENV) or self.seconds))
        _mark("done")
        return self.inner.predict(frame)


def _mark(what: str) -> None:
    calls = os.environ.get(SLEEPY_CALLS_ENV)
    if calls:
        with open(calls, "a") as out:
            out.write(f"{what} {os.getpid()}\n")


def marks(path: Path, what: str) -> list[str]:
    """The pids that logged `what` ("start" or "done") in a calls file, one per call."""
    if not path.exists():
        return []
    return [line.split()[1] for line in path.read_text().splitlines()
            if line.startswith(what + " ")]


def register_sleepy(url: str, version: str, seconds: float) -> None:
    """A seed-style dict artifact around SleepyModel, promoted to production."""
    artifact = {"model": SleepyModel(small_model(), seconds), "preprocessor": None,
                "scaler": None}
    with ModelEvaluationDB(url) as db:
        db.store_model(f"run-{version}", version, "Sleepy", serialize(artifact), rmse=1.0,
                       is_production=True)
