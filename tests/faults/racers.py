"""Functions run in spawned processes by test_concurrency: each opens its own store handle
(own engine, own connections), waits at a barrier, then races the others."""

from __future__ import annotations

from typing import Any

from modelstore import ModelEvaluationDB
from modelstore.errors import PredqError


def move_production(url: str, index: int, barrier: Any, out: Any) -> None:
    """Promote (two of three racers) or roll back (the third), then report."""
    with ModelEvaluationDB(url) as db:
        db.production_pointer()  # connect and check the schema before the race
        barrier.wait(timeout=60)
        try:
            if index % 3 == 2:
                moved = db.rollback_production_model(by=f"racer-{index}")
            else:
                moved = db.set_production_model(f"v{1 + index % 4}", by=f"racer-{index}")
        except PredqError as exc:
            out.put((index, "error", f"{type(exc).__name__}: {exc}"))
            return
        # A promote to the version already in production changes nothing (no history row).
        out.put((index, "ok" if moved.changed else "unchanged",
                 (moved.action, moved.from_version, moved.to_version, moved.generation)))


def store_same_version(url: str, index: int, data: bytes, barrier: Any, out: Any) -> None:
    with ModelEvaluationDB(url) as db:
        db.production_pointer()
        barrier.wait(timeout=60)
        try:
            stored = db.store_model(f"run-dup-{index}", "dup-v", "RandomForest", data,
                                    describe=False)
        except PredqError as exc:
            out.put((index, "error", f"{type(exc).__name__}: {exc}"))
            return
        out.put((index, "ok", stored.model_version))
