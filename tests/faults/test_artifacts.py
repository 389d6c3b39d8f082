"""Invariant 6: artifacts are verified before they are deserialized. Every bad artifact is
refused at promote time by the store, and refused by the worker when the production
pointer is forced to it by raw SQL: the worker keeps serving v1, reports the error per
process in predq_serving, and a code-running pickle never runs (its marker never appears)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import pytest
from celery import Celery

from modelstore import ModelEvaluationDB
from modelstore.artifacts import sha256_hex
from tests.faults import artifact_cases as ac
from tests.faults import report
from tests.faults.dbcheck import query, serving_replies, wait_until
from tests.faults.report import ReportFn
from tests.faults.stack import fault_env, marker_pickle
from tests.support import models
from tests.support.workerproc import WorkerProcess, client_app, running_workers

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

GROUP = "Artifacts that must never be deserialized"
report.describe_group(
    GROUP, "Bad artifacts promoted through the store (refused at promote time) and forced "
    "into production by raw SQL (a tampered database), worker holding PREDQ_SIGNING_KEY:",
    "Each time: the worker kept serving v1, every process reported the error in "
    "predq_serving, predictions came from v1, and no code-running pickle's marker appeared.")


@dataclass
class Stack:
    url: str
    app: Celery
    worker: WorkerProcess
    tmp: Path


@pytest.fixture(scope="module")
def stack(module_pg_url: str, module_redis_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("artifacts")
    ac.store(module_pg_url, "v1", ac.good_bytes(0.0), ac.KEY)
    with ModelEvaluationDB(module_pg_url, signing_key=ac.KEY) as db:
        db.set_production_model("v1")
    env = fault_env(module_pg_url, module_redis_url, tmp, PREDQ_SIGNING_KEY=ac.KEY.decode())
    app = client_app(env)
    try:
        with running_workers(env, tmp, names=("artifacts",), app=app) as (worker,):
            yield Stack(module_pg_url, app, worker, tmp)
    finally:
        app.close()


def _pointer(url: str) -> tuple[str, int]:
    row = query(url, "SELECT model_version, generation FROM production_pointer "
                     "WHERE model_name = 'default'")[0]
    return str(row[0]), int(row[1])


def _predict(stack: Stack, rid: str) -> dict[str, Any]:
    return dict(stack.app.send_task("predq.predict", kwargs={
        "features": models.rows(1)[0], "request_id": rid}).get(timeout=60))


def _default_status(stack: Stack) -> list[dict[str, Any]]:
    return [r for r in serving_replies(stack.app) if r["model"] == "default"]


def _wait_status(stack: Stack, done: Any, timeout: float = 20) -> list[dict[str, Any]]:
    replies: list[dict[str, Any]] = []

    def check() -> bool:
        nonlocal replies
        replies = _default_status(stack)
        return bool(replies) and all(done(r) for r in replies)

    wait_until(check, timeout, interval=0.3)
    return replies


def _back_to_v1(stack: Stack) -> None:
    with ModelEvaluationDB(stack.url, signing_key=ac.KEY) as db:
        db.set_production_model("v1", reason="fault suite: restore")
    generation = _pointer(stack.url)[1]
    _wait_status(stack, lambda r: r["generation"] == generation and not r["error"])


def test_marker_payload_is_live(tmp_path: Path) -> None:
    """Positive control: loading the payload the way a worker would does run its code."""
    marker = tmp_path / "control-marker"
    joblib.load(io.BytesIO(marker_pickle(marker)))
    assert marker.is_dir()


@pytest.mark.parametrize("case", ac.CASES, ids=[c.name for c in ac.CASES])
def test_bad_artifact_is_never_deserialized(stack: Stack, case: ac.BadArtifact,
                                            fault_report: ReportFn) -> None:
    marker = stack.tmp / f"PWNED-{abs(hash(case.name))}"
    version = case.plant(stack.url, marker)
    before = _pointer(stack.url)
    history_before = query(stack.url, "SELECT count(*) FROM promotion_history")[0][0]
    with ModelEvaluationDB(stack.url, signing_key=ac.KEY) as db, \
            pytest.raises(case.refusal) as refused:
        db.set_production_model(version)
    unchanged = _pointer(stack.url) == before and query(
        stack.url, "SELECT count(*) FROM promotion_history")[0][0] == history_before

    ac.force_pointer(stack.url, version)
    forced_generation = _pointer(stack.url)[1]
    stack.app.control.broadcast("predq_promote", arguments={"model": "default"})
    replies = _wait_status(stack, lambda r: version in (r["error"] or ""))
    answer = _predict(stack, f"art-{version}")
    marker_seen = marker.exists()
    error = replies[0]["error"] if replies else None
    _back_to_v1(stack)
    fault_report(case.name,
                 f"promote refused ({type(refused.value).__name__}); forced by SQL to "
                 f"generation {forced_generation}: worker kept v1 and reported: "
                 f"{(error or 'no error')[:150]}",
                 f"marker file {'CREATED' if marker_seen else 'absent'}; prediction after "
                 f"the forced promote served by {answer.get('model_version')}; "
                 f"{len(replies)} process(es) reported the error", group=GROUP)

    assert unchanged, "a refused promote changes neither the pointer nor the history"
    assert not marker_seen, "the artifact's pickle ran"
    assert replies and all(r["model_version"] == "v1" for r in replies), replies
    assert error is not None and case.worker_says in error and version in error, replies
    assert answer.get("model_version") == "v1" and "prediction" in answer, answer
    assert not models.is_v2(answer["prediction"])


def test_poisoned_local_cache_is_refused_and_refetched(stack: Stack,
                                                       fault_report: ReportFn) -> None:
    """Malicious bytes planted in the worker's artifact cache under a genuine digest: the
    digest check refuses them, the genuine artifact is fetched from Postgres instead."""
    genuine = ac.good_bytes(models.V2_OFFSET)
    marker = stack.tmp / "PWNED-cache"
    cache = stack.tmp / "models" / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{sha256_hex(genuine)}.joblib").write_bytes(marker_pickle(marker))
    ac.store(stack.url, "v2", genuine, ac.KEY)
    with ModelEvaluationDB(stack.url, signing_key=ac.KEY) as db:
        generation = db.set_production_model("v2").generation
    replies = _wait_status(stack, lambda r: r["generation"] == generation)
    answer = _predict(stack, "art-cache-v2")
    marker_seen = marker.exists()
    _back_to_v1(stack)
    fault_report("Local artifact cache poisoned: code-running bytes under a genuine signed "
                 "digest", "worker refused the cached bytes (digest mismatch), fetched the "
                 f"genuine artifact from Postgres and switched to {answer.get('model_version')}",
                 f"marker file {'CREATED' if marker_seen else 'absent'}; served from "
                 f"{[r['source'] for r in replies]}", group=GROUP)
    assert not marker_seen
    assert replies and all(r["model_version"] == "v2" for r in replies), replies
    assert answer.get("model_version") == "v2" and models.is_v2(answer["prediction"])


WIRE_BUG = (
    "predq.store_model signs whatever bytes arrive in artifact_b64 with the worker's own "
    "PREDQ_SIGNING_KEY and promotes them on request, so anyone who can write to the broker "
    "gets a pickle deserialized (code run) by every worker: the signature proves nothing "
    "about who made the artifact")


def test_pickle_uploaded_through_store_model_is_not_run(stack: Stack,
                                                         fault_report: ReportFn) -> None:
    """A code-running pickle sent by a plain client as predq.store_model(artifact_b64=...,
    promote=True): with a signing key set, the worker must not vouch for it and load it."""
    marker = stack.tmp / "PWNED-wire"
    answer = stack.app.send_task("predq.store_model", kwargs={
        "artifact_b64": base64.b64encode(marker_pickle(marker)).decode(),
        "model_type": "RandomForest", "run_id": "run-wire", "version": "wire-evil",
        "promote": True}).get(timeout=60)
    replies = _wait_status(stack, lambda r: r["model_version"] == "wire-evil", timeout=5)
    marker_seen = marker.exists()
    serving = sorted({str(r["model_version"]) for r in replies})
    _back_to_v1(stack)
    fault_report("Code-running pickle uploaded through predq.store_model (artifact_b64, "
                 "promote=True) by a plain broker client, PREDQ_SIGNING_KEY set",
                 f"the worker answered {str(answer)[:110]}; processes then served {serving}",
                 "marker file " + ("CREATED: the pickle ran in the worker" if marker_seen
                                   else "absent"),
                 group=GROUP)
    assert not marker_seen, "the uploaded pickle was deserialized by the worker"
    assert serving == ["v1"]
