"""Concurrent promotion and storing from separate connections (threads on both backends,
spawned processes on Postgres): exactly one production row at every instant, the pointer
agreeing with the flag, and a gapless, chained promotion history."""

from __future__ import annotations

import itertools
import multiprocessing
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text

from modelstore import ModelEvaluationDB, StoredModel
from modelstore.errors import DuplicateModelVersion, RollbackError

VERSIONS = [f"v{n}" for n in range(1, 6)]


def _store_versions(url: str, blob: bytes) -> None:
    with ModelEvaluationDB(url) as db:
        for n, version in enumerate(VERSIONS):
            db.store_model(f"run-{version}", version, "RandomForest", blob + bytes(n),
                           describe=False)


def promote_randomly(url: str, seed: int, moves: int) -> int:
    """Promote or roll back at random; returns how many moves changed production.

    Module level so spawned processes can import it.
    """
    rng = random.Random(seed)
    applied = 0
    db = ModelEvaluationDB(url)
    for _ in range(moves):
        try:
            if rng.random() < 0.3:
                moved = db.rollback_production_model(by=f"worker-{seed}")
            else:
                moved = db.set_production_model(rng.choice(VERSIONS), by=f"worker-{seed}")
            applied += moved.changed  # promoting the current version writes nothing
        except RollbackError:
            pass  # nothing earlier to go back to: a refusal that changes nothing
    return applied


def _check_invariants(engine: Engine, applied: int) -> None:
    with engine.connect() as conn:
        flagged = conn.execute(text(
            "SELECT model_version FROM model_artifacts WHERE is_production")).scalars().all()
        pointer = conn.execute(text(
            "SELECT model_version, generation FROM production_pointer")).one()
        history = conn.execute(text(
            "SELECT from_version, to_version, generation FROM promotion_history ORDER BY id"
        )).all()
    assert len(flagged) == 1
    assert flagged[0] == pointer.model_version
    assert len(history) == applied
    assert [h.generation for h in history] == list(range(1, applied + 1))
    assert pointer.generation == applied and history[-1].to_version == pointer.model_version
    assert history[0].from_version is None
    for previous, current in itertools.pairwise(history):
        assert current.from_version == previous.to_version


class ProductionWatcher(threading.Thread):
    """Counts production rows over and over while the promoters run."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.counts: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                self.counts.add(conn.execute(text(
                    "SELECT count(*) FROM model_artifacts WHERE is_production")).scalar_one())
                conn.rollback()


def test_concurrent_promotions_from_threads(store_url: str, pipeline_bytes: bytes,
                                            raw_engine: Callable[[str], Engine]) -> None:
    _store_versions(store_url, pipeline_bytes)
    ModelEvaluationDB(store_url).set_production_model("v1")
    watcher = ProductionWatcher(raw_engine(store_url))
    watcher.start()
    results: list[int] = []
    threads = [threading.Thread(target=lambda s=seed: results.append(
        promote_randomly(store_url, s, 15))) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    watcher.stop.set()
    watcher.join()
    assert len(results) == 6
    assert watcher.counts == {1}
    _check_invariants(raw_engine(store_url), 1 + sum(results))


def test_concurrent_promotions_from_processes(pg_url: str, pipeline_bytes: bytes,
                                              raw_engine: Callable[[str], Engine]) -> None:
    _store_versions(pg_url, pipeline_bytes)
    ModelEvaluationDB(pg_url).set_production_model("v1")
    watcher = ProductionWatcher(raw_engine(pg_url))
    watcher.start()
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.starmap(promote_randomly, [(pg_url, seed, 20) for seed in range(3)])
    watcher.stop.set()
    watcher.join()
    assert watcher.counts == {1}
    _check_invariants(raw_engine(pg_url), 1 + sum(results))


def _race(calls: list[Callable[[], object]]) -> list[object]:
    """Run the calls at once from separate threads; returns results or exceptions."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_the_same_version_stored_twice_at_once(store_url: str, pipeline_bytes: bytes) -> None:
    db = ModelEvaluationDB(store_url)
    outcomes = _race([
        lambda n=n: db.store_model(f"run-{n}", "20260105_143022", "RandomForest",
                                   pipeline_bytes, describe=False)
        for n in range(4)])
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(errors) == 3 and all(isinstance(e, DuplicateModelVersion) for e in errors)
    assert all("'20260105_143022'" in str(e) for e in errors)
    assert len(db.list_models()) == 1


def test_auto_versions_in_one_second_get_suffixes(store_url: str, pipeline_bytes: bytes,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import modelstore.versions

    frozen = datetime(2026, 1, 5, 14, 30, 22, tzinfo=UTC)
    monkeypatch.setattr(modelstore.versions, "new_version",
                        lambda: frozen.strftime("%Y%m%d_%H%M%S"))
    db = ModelEvaluationDB(store_url)
    first = db.store_model("run-a", None, "RandomForest", pipeline_bytes, describe=False)
    second = db.store_model("run-b", None, "RandomForest", pipeline_bytes, describe=False)
    racing = _race([lambda n=n: db.store_model(f"run-{n}", None, "RandomForest",
                                               pipeline_bytes, describe=False)
                    for n in range(4)])
    assert (first.model_version, second.model_version) == ("20260105_143022",
                                                            "20260105_143022_2")
    assert all(isinstance(r, StoredModel) for r in racing), racing
    versions = {r.model_version for r in racing if isinstance(r, StoredModel)}
    assert versions == {f"20260105_143022_{n}" for n in range(3, 7)}
