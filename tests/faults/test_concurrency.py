"""Invariant 2 under contention: concurrent promotes and rollbacks from separate processes,
and two stores of the same version (through the store API and through predq.store_model)."""

from __future__ import annotations

import base64
import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from modelstore import ModelEvaluationDB, formats
from modelstore.artifacts import serialize
from tests.faults import racers
from tests.faults.dbcheck import engine_for, query
from tests.faults.report import ReportFn
from tests.faults.stack import fault_env
from tests.support import models
from tests.support.workerproc import client_app, running_workers

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

RACERS = 20


def _race(target: Callable[..., None], args: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Run `target(*a, barrier, queue)` in one spawned process per `a`; all results."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args))
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, barrier, out)) for a in args]
    try:
        for p in procs:
            p.start()
        results = [out.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return sorted(results)


class ProductionSampler:
    """Counts production rows of 'default' over and over while the race runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.counts: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:


        with engine_for(self.url) as engine, engine.connect() as conn:
            while not self._stop.is_set():
                self.counts.append(int(conn.execute(text(
                    "SELECT count(*) FROM model_artifacts WHERE model_name = 'default' "
                    "AND is_production")).scalar_one()))
                conn.commit()
                time.sleep(0.002)

    def __enter__(self) -> ProductionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _history(url: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in query(url, "SELECT generation, from_version, to_version, action "
                                         "FROM promotion_history WHERE model_name = 'default' "
                                         "ORDER BY generation")]


def test_concurrent_promotes_and_rollbacks(pg_url: str, fault_report: ReportFn) -> None:
    data = serialize(models.small_model())
    with ModelEvaluationDB(pg_url) as db:
        for n in range(1, 5):
            db.store_model(f"run-v{n}", f"v{n}", "RandomForest", data, describe=False,
                           is_production=n == 1)
    with ProductionSampler(pg_url) as sampler:
        results = _race(racers.move_production, [(pg_url, i) for i in range(RACERS)])
    ok = [r[2] for r in results if r[1] == "ok"]
    errors = [r[2] for r in results if r[1] == "error"]
    unchanged = [r[2] for r in results if r[1] == "unchanged"]
    history = _history(pg_url)
    production = query(pg_url, "SELECT model_version FROM model_artifacts "
                               "WHERE model_name = 'default' AND is_production")
    pointer = query(pg_url, "SELECT model_version, generation FROM production_pointer "
                            "WHERE model_name = 'default'")
    gens = [h[0] for h in history]
    chained = all(history[k][1] == history[k - 1][2] for k in range(1, len(history)))
    fault_report(
        f"{RACERS} concurrent promotes and rollbacks from {RACERS} spawned processes",
        f"{len(ok)} moved production, {len(unchanged)} found their version already in "
        f"production (nothing changed), {len(errors)} refused with a clear error "
        f"({sorted({e.split(':')[0] for e in errors}) or 'none'}); history chained "
        f"from -> to: {chained}",
        f"production rows at the end: {len(production)}; {len(sampler.counts):,} samples "
        f"during the race: min {min(sampler.counts)}, max {max(sampler.counts)}; "
        f"generations 1..{max(gens)}, gaps or repeats: "
        f"{gens != list(range(1, len(gens) + 1))}")

    assert len(results) == RACERS
    assert all("RollbackError" in e for e in errors), errors
    assert len(production) == 1 and set(sampler.counts) == {1}
    assert gens == list(range(1, len(gens) + 1)), gens
    assert len(history) == 1 + len(ok)
    assert history[0][1] is None and chained, history
    assert sorted(o[3] for o in ok) == gens[1:]
    assert pointer[0] == (history[-1][2], gens[-1]) and production[0][0] == pointer[0][0]


def test_same_version_stored_twice_through_the_store(pg_url: str, fault_report: ReportFn) -> None:
    data = serialize(models.small_model())
    results = _race(racers.store_same_version, [(pg_url, i, data) for i in range(2)])
    outcomes = [r[1] for r in results]
    rows = query(pg_url, "SELECT run_id FROM model_artifacts WHERE model_version = 'dup-v'")
    error = next((r[2] for r in results if r[1] == "error"), "")
    fault_report("Two processes store_model the same version at once (ModelEvaluationDB)",
                 f"one stored it, the other got: {error[:140]}",
                 f"{len(rows)} artifact row for the version")
    assert sorted(outcomes) == ["error", "ok"], results
    assert error.startswith("DuplicateModelVersion") and "dup-v" in error
    assert len(rows) == 1


def test_same_version_stored_twice_through_the_task(pg_url: str, redis_db: str,
                                                    tmp_path: Path, fault_report: ReportFn) -> None:
    models.register(pg_url, "v1")
    env = fault_env(pg_url, redis_db, tmp_path)
    app = client_app(env)
    # skops: a worker with no signing key accepts no pickle from the broker.
    payload = base64.b64encode(formats.dumps(models.small_model(), "skops")).decode()
    kwargs = {"artifact_b64": payload, "model_type": "RandomForest", "version": "dup-task",
              "format": "skops"}
    with running_workers(env, tmp_path, ("storerace",), app=app):
        sent = [app.send_task("predq.store_model", kwargs={**kwargs, "run_id": f"run-t{i}"})
                for i in range(2)]
        answers = [r.get(timeout=60) for r in sent]
    rows = query(pg_url, "SELECT run_id FROM model_artifacts WHERE model_version = 'dup-task'")
    errors = [a["error"] for a in answers if "error" in a]
    fault_report("Two predq.store_model tasks with the same version at once (one worker, "
                 "16 threads)",
                 "one returned its sha256, the other {'error': "
                 f"{errors[0][:120] if errors else None!r}}}",
                 f"{len(rows)} artifact row for the version")
    assert sorted("error" in a for a in answers) == [False, True], answers
    assert "dup-task" in errors[0] and "already stored" in errors[0]
    assert len(rows) == 1
