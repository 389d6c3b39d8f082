"""The live quality gate: a worse v2 with enough labelled rows is rolled back once, with the
reason in the history; a better (or not-worse-than-margin) v2 stays; too few labels wait;
several gates racing on one promotion roll back once; and a real worker runs it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from modelstore.db import ModelEvaluationDB
from tests.support import models
from tests.support.workerproc import client_app, running_workers, worker_env
from workers.quality_gate import KEEP, ROLLBACK, WAIT, GateConfig, QualityGate

CONFIG = GateConfig(margin=0.1, min_rows=200, interval_s=1.0)


def labelled(db: ModelEvaluationDB, version: str, n: int, error: float,
             unlabelled: int = 0) -> None:
    """n predictions of `version` off by `error` with actuals, plus unlabelled ones."""
    rows = [{"request_id": f"{version}-{i}", "model_version": version,
             "input_features": {"x": i}, "predicted_value": 1000.0 + error,
             "actual_value": 1000.0 if i < n else None} for i in range(n + unlabelled)]
    db.store_predictions(rows)


def promoted_v2(url: str, v1_error: float, v2_error: float, v2_rows: int = 250,
                real_models: bool = False) -> ModelEvaluationDB:
    """v1 served and labelled, then v2 promoted and labelled."""
    db = ModelEvaluationDB(url)
    if real_models:
        models.register(url, "v1")
        models.register(url, "v2", offset=models.V2_OFFSET, promote=False)
    else:
        db.store_model("run-1", "v1", "Dummy", b"model-one", describe=False, is_production=True)
        db.store_model("run-2", "v2", "Dummy", b"model-two", describe=False)
    labelled(db, "v1", 300, v1_error)
    db.set_production_model("v2", reason="better offline")
    labelled(db, "v2", v2_rows, v2_error, unlabelled=100)
    return db


def production(db: ModelEvaluationDB) -> str | None:
    pointer = db.production_pointer()
    return None if pointer is None else pointer.model_version


def gate(db: ModelEvaluationDB, config: GateConfig = CONFIG) -> QualityGate:
    return QualityGate(lambda: db, config)


def test_worse_v2_is_rolled_back_once_with_the_reason(store_url: str) -> None:
    db = promoted_v2(store_url, v1_error=10.0, v2_error=30.0)
    [judgement] = gate(db).check_once()
    assert judgement.verdict == ROLLBACK
    assert (judgement.current.rows, judgement.previous.rows) == (250, 300)
    assert production(db) == "v1"
    last = db.promotion_history(limit=1)[0]
    assert (last["action"], last["from_version"], last["to_version"]) == ("rollback", "v2", "v1")
    assert last["reason"].startswith("quality gate: MAE 30 vs 10 over 250 rows")
    assert last["promoted_by"].startswith("quality-gate@")
    # The rollback target is never judged: nothing further happens.
    assert gate(db).check_once() == []
    assert len(db.promotion_history()) == 3


@pytest.mark.parametrize("v2_error", [5.0, 10.0, 10.9])
def test_better_or_within_margin_v2_stays(store_url: str, v2_error: float) -> None:
    db = promoted_v2(store_url, v1_error=10.0, v2_error=v2_error)
    [judgement] = gate(db).check_once()
    assert judgement.verdict == KEEP
    assert production(db) == "v2"
    assert db.promotion_history(limit=1)[0]["action"] == "promote"


def test_too_few_labelled_rows_wait(store_url: str) -> None:
    db = promoted_v2(store_url, v1_error=10.0, v2_error=99.0, v2_rows=199)
    [judgement] = gate(db).check_once()
    assert judgement.verdict == WAIT and judgement.current.rows == 199
    assert production(db) == "v2"
    labelled_more = [{"request_id": "late", "model_version": "v2", "input_features": {},
                      "predicted_value": 1099.0, "actual_value": 1000.0}]
    db.store_predictions(labelled_more)
    assert gate(db).check_once()[0].verdict == ROLLBACK


def test_a_model_not_watched_is_left_alone(store_url: str) -> None:
    db = promoted_v2(store_url, v1_error=10.0, v2_error=30.0)
    config = GateConfig(margin=0.1, min_rows=200, interval_s=1.0, models=("other",))
    assert gate(db, config).check_once() == []
    assert production(db) == "v2"


def test_a_stale_judgement_stands_down(store_url: str) -> None:
    db = promoted_v2(store_url, v1_error=10.0, v2_error=30.0)
    first, second = gate(db), gate(db)
    judged = second.judge("default")
    assert judged is not None and judged.verdict == ROLLBACK
    assert first.rollback(first.judge("default")) is not None  # type: ignore[arg-type]
    assert second.rollback(judged) is None  # production moved since it judged
    actions = [h["action"] for h in db.promotion_history()]
    assert actions.count("rollback") == 1


def test_racing_gates_roll_back_once(pg_url: str) -> None:
    db = promoted_v2(pg_url, v1_error=10.0, v2_error=30.0)
    gates = [gate(ModelEvaluationDB(pg_url)) for _ in range(4)]
    judgements = [g.judge("default") for g in gates]
    barrier = threading.Barrier(len(gates))
    moved: list[object] = []

    def run(g: QualityGate, j: object) -> None:
        barrier.wait()
        moved.append(g.rollback(j))  # type: ignore[arg-type]

    threads = [threading.Thread(target=run, args=pair) for pair in zip(gates, judgements,
                                                                      strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(m is not None for m in moved) == 1
    assert [h["action"] for h in db.promotion_history()].count("rollback") == 1
    assert production(db) == "v1"


@pytest.mark.e2e
def test_a_worker_with_the_gate_on_rolls_back_a_worse_promotion(
        pg_url: str, redis_url: str, tmp_path: Path) -> None:
    env = worker_env(pg_url, redis_url, tmp_path, PREDQ_QUALITY_GATE_MARGIN="0.1",
                     PREDQ_QUALITY_GATE_MIN_ROWS="200", PREDQ_QUALITY_GATE_INTERVAL="0.3",
                     PREDQ_METRICS_PORT="0")
    app = client_app(env)
    feats = models.rows(1)[0]
    with running_workers(env, tmp_path, app=app):
        db = promoted_v2(pg_url, v1_error=10.0, v2_error=30.0, real_models=True)
        deadline = time.monotonic() + 60
        while production(db) != "v1" and time.monotonic() < deadline:
            time.sleep(0.2)
        last = db.promotion_history(limit=1)[0]
        assert (last["action"], last["to_version"]) == ("rollback", "v1")
        assert last["reason"].startswith("quality gate: MAE 30 vs 10 over 250 rows")
        served = None
        while served != "v1" and time.monotonic() < deadline:
            served = app.send_task("predq.predict", kwargs={"features": feats}).get(
                timeout=30)["model_version"]
        assert served == "v1"
    assert [h["action"] for h in db.promotion_history()].count("rollback") == 1
