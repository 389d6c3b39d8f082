"""Worker environments and raw-wire helpers shared by the fault tests."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from celery import Celery

from tests.support.workerproc import worker_env


def fault_env(database_url: str, redis_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    """The harness's worker environment, with the metrics endpoint off (no port clashes
    between the suite's workers, nothing listening beyond what the test needs)."""
    return worker_env(database_url, redis_url, tmp, **{"PREDQ_METRICS_PORT": "0", **extra})


class MarkerPayload:
    """Unpickling this object creates the directory `path` (os.mkdir): code execution made
    visible. Used to prove that a pickle is never deserialized."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


def marker_pickle(path: Path) -> bytes:
    return pickle.dumps(MarkerPayload(path), protocol=4)


def publish_raw(app: Celery, body: bytes, content_type: str, task: str, task_id: str,
                content_encoding: str = "binary") -> None:
    """Publish bytes straight onto the predq queue, as a hostile client could."""
    with app.connection_for_write() as conn:
        conn.Producer().publish(body, serializer=None, content_type=content_type,
                                content_encoding=content_encoding, routing_key="predq",
                                headers={"task": task, "id": task_id, "lang": "py"},
                                retry=True)
