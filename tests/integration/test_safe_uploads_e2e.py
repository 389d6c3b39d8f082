"""Issue 10, safe by default: nothing arriving through the queue runs code on a worker.

Real Postgres, Redis and worker subprocesses. Without PREDQ_SIGNING_KEY a pickle upload is
refused; skops (allow-listed) and ONNX uploads serve; with a key ring, signed pickles by
any key of the ring are accepted.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from celery import Celery

from modelstore import ModelEvaluationDB, ModelLoader, artifacts, formats
from producer.sample import FEATURES, make_cars
from tests.faults.stack import marker_pickle
from tests.support import models, uploads
from tests.support.db import fetch
from tests.support.workerproc import client_app, running_workers, worker_env

pytestmark = pytest.mark.e2e


def _store(app: Celery, data: bytes, **kwargs: Any) -> dict[str, Any]:
    body = {"artifact_b64": base64.b64encode(data).decode(), "model_type": "RandomForest",
            "run_id": f"run-{kwargs.get('version', 'x')}", **kwargs}
    return dict(app.send_task("predq.store_model", kwargs=body).get(timeout=120))


def _predict(app: Celery, features: dict[str, Any], model: str = "default") -> dict[str, Any]:
    return dict(app.send_task("predq.predict", kwargs={"features": features, "model": model}
                              ).get(timeout=60))


def _artifact_count(url: str) -> int:
    return int(fetch(url, "SELECT count(*) FROM model_artifacts")[0][0])


def _history_count(url: str) -> int:
    return int(fetch(url, "SELECT count(*) FROM promotion_history")[0][0])


def _serves(app: Celery, version: str, model: str = "default", tries: int = 100) -> dict[str, Any]:
    """Predict until `version` answers (the worker converges within its poll)."""
    import time

    answer: dict[str, Any] = {}
    for _ in range(tries):
        answer = _predict(app, models.rows(1)[0], model)
        if answer.get("model_version") == version:
            return answer
        time.sleep(0.2)
    raise AssertionError(f"{model} never served {version}: {answer}")


def test_without_a_key_the_queue_carries_data_never_code(pg_url: str, redis_url: str,
                                                         tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    env = worker_env(pg_url, redis_url, tmp_path)
    app = client_app(env)
    marker = tmp_path / "PWNED"
    evil = marker_pickle(marker)
    clf = uploads.classifier()
    try:
        with running_workers(env, tmp_path, app=app):
            assert _predict(app, models.rows(1)[0])["model_version"] == "v1"

            # The evil pickle, promote=True, no key anywhere: refused, nothing stored.
            refused = _store(app, evil, version="evil", promote=True)
            assert "refusing an unsigned joblib (pickle) upload" in refused["error"]
            assert "skops" in refused["error"] and "--direct" in refused["error"]
            bad = {
                "wrong signature": _store(app, artifacts.serialize(models.small_model()),
                                          version="b1", signature="00" * 32),
                "skops type off the list": _store(app, uploads.skops_calling("os", "system"),
                                                  version="b2", format="skops"),
                "onnx junk": _store(app, b"\x08\x07junk", version="b3", format="onnx"),
                "format mismatch": _store(app, evil, version="b4", format="skops"),
                "unknown format": _store(app, evil, version="b5", format="pickle"),
                "not a model": _store(app, formats.dumps({"a": 1}, "skops"), version="b6",
                                      format="skops"),
                # Building this object would create the marker directory.
                "constructs on load": _store(app, uploads.skops_constructing_marker(marker),
                                             version="b7", format="skops", promote=True),
            }
            assert "no PREDQ_SIGNING_KEY to verify" in bad["wrong signature"]["error"]
            assert "os.system" in bad["skops type off the list"]["error"]
            assert "onnxruntime cannot open it" in bad["onnx junk"]["error"]
            assert "declared 'skops' but holds joblib bytes" in bad["format mismatch"]["error"]
            assert "format: expected one of" in bad["unknown format"]["error"]
            assert "not a model" in bad["not a model"]["error"]
            assert uploads.CONSTRUCTION_MARKER_TYPE in bad["constructs on load"]["error"]
            assert _artifact_count(pg_url) == 1 and not marker.exists()
            assert _predict(app, models.rows(1)[0])["model_version"] == "v1"

            # A broadcast only makes workers re-read the database pointer: bytes or a path
            # riding along are ignored.
            evil_path = tmp_path / "evil.pkl"
            evil_path.write_bytes(evil)
            app.control.broadcast("predq_promote", reply=True, timeout=2, arguments={
                "model": "default", "generation": 99, "version": "evil",
                "artifact_path": str(evil_path),
                "artifact_b64": base64.b64encode(evil).decode()})
            app.control.broadcast("predq_reload", reply=True, timeout=2, arguments={
                "model": "default", "artifact_path": str(evil_path)})
            assert _predict(app, models.rows(1)[0])["model_version"] == "v1"
            assert not marker.exists()

            # skops pipeline, promoted: serves with the in-process model's predictions.
            v2 = models.small_model(models.V2_OFFSET)
            pipe_bytes = formats.dumps(v2, "skops")
            stored = _store(app, pipe_bytes, version="v2", promote=True, format="skops",
                            metrics={"rmse": 56.0, "r2": 0.9, "mape": 0.1})
            assert stored["model_version"] == "v2" and stored["format"] == "skops", stored
            _serves(app, "v2")
            rows = models.rows(20, seed=11)
            answers = [_predict(app, r) for r in rows]
            expected = v2.predict(pd.DataFrame(rows)[list(FEATURES)])
            assert [a["prediction"] for a in answers] == pytest.approx(list(expected))
            # 17.4: metrics through the worker path reach the seed's columns too.
            row = fetch(pg_url, "SELECT rmse_score, r2_score, serialization_format FROM "
                                "model_artifacts WHERE model_version = 'v2'")[0]
            assert tuple(row) == (56.0, 0.9, "skops")

            # 12.6: the same upload re-sent returns the same version, promotes at most once.
            history = _history_count(pg_url)
            again = _store(app, pipe_bytes, version="v2", promote=True, format="skops",
                           metrics={"rmse": 56.0})
            assert again["model_version"] == "v2" and "error" not in again
            assert _artifact_count(pg_url) == 2 and _history_count(pg_url) == history

            # A classifier as skops: confidence is the top probability.
            sample = pd.DataFrame({"a": np.linspace(-2, 2, 9), "b": np.linspace(-1, 2, 9)})
            _store(app, formats.dumps(clf, "skops"), version="c1", model="clf", promote=True,
                   format="skops", feature_schema={"columns": [
                       {"name": "a", "dtype": "number"}, {"name": "b", "dtype": "number"}]})
            got = [_predict(app, {"a": float(a), "b": float(b)}, "clf")
                   for a, b in sample.itertuples(index=False)]
            assert [g["prediction"] for g in got] == list(clf.predict(sample).astype(float))
            assert [g["confidence"] for g in got] == pytest.approx(
                list(clf.predict_proba(sample).max(axis=1)))

            # ONNX: converted by the client library, parity checked, served by onnxruntime.
            pytest.importorskip("onnxruntime")
            from modelstore import onnxmodel

            onnx_sample = make_cars(200, seed=5)[list(FEATURES)]
            onnx_bytes = onnxmodel.convert(models.small_model(), onnx_sample)
            _store(app, onnx_bytes, version="o1", model="onnx", promote=True, format="onnx")
            onnx_rows = models.rows(50, seed=13)
            onnx_answers = [_predict(app, r, "onnx") for r in onnx_rows]
            sk = models.small_model().predict(pd.DataFrame(onnx_rows)[list(FEATURES)])
            got_onnx = np.array([a["prediction"] for a in onnx_answers])
            scale = float(np.abs(sk).max())
            agree = np.abs(got_onnx - sk) <= onnxmodel.PARITY_RTOL * scale
            assert {a["model_version"] for a in onnx_answers} == {"o1"}
            assert agree.all(), got_onnx - sk
    finally:
        app.close()
    assert not marker.exists()


def test_signed_pickles_and_key_rotation(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    old, new = b"key-2025-old", b"key-2026-new"
    with ModelEvaluationDB(pg_url, signing_key=old) as db:  # signed with the old key
        db.store_model("run-v1", "v1", "RandomForest", artifacts.serialize(models.small_model()),
                       is_production=True)
        db.store_model("run-r1", "r1", "RandomForest",
                       artifacts.serialize(models.small_model(models.V2_OFFSET)))
    # The new key is put in front; the old one still verifies.
    env = worker_env(pg_url, redis_url, tmp_path, PREDQ_SIGNING_KEY=f"{new.decode()},"
                     f"{old.decode()}")
    app = client_app(env)
    marker = tmp_path / "PWNED"
    try:
        with running_workers(env, tmp_path, app=app):
            assert _predict(app, models.rows(1)[0])["model_version"] == "v1"
            with ModelEvaluationDB(pg_url, signing_key=(new, old)) as db:
                db.set_production_model("r1")
            assert models.is_v2(_serves(app, "r1")["prediction"])

            data = artifacts.serialize(models.small_model())
            by_old = _store(app, data, version="s-old", signature=uploads.signed(data, old))
            by_new = _store(app, data, version="s-new", run_id="run-s-new", promote=True,
                            signature=uploads.signed(data, new))
            assert by_old["model_version"] == "s-old" and by_new["model_version"] == "s-new"
            _serves(app, "s-new")
            evil = marker_pickle(marker)
            unsigned = _store(app, evil, version="e1", promote=True)
            forged = _store(app, evil, version="e2", promote=True,
                            signature=uploads.signed(evil, b"attacker"))
            assert "must carry its HMAC-SHA256 signature" in unsigned["error"]
            assert "does not match PREDQ_SIGNING_KEY" in forged["error"]
            assert _predict(app, models.rows(1)[0])["model_version"] == "s-new"
    finally:
        app.close()
    assert not marker.exists()
    assert _artifact_count(pg_url) == 4


def test_seed_store_model_with_pickle_bytes_still_works(pg_url: str, tmp_path: Path) -> None:
    """The database is trusted: the seed's API stores and loads a plain joblib pickle."""
    with ModelEvaluationDB(pg_url) as db:
        db.store_model("run-seed", "20260105_143022", "RandomForest",
                       model_binary=artifacts.serialize(models.small_model()),
                       rmse=3500.5, is_production=True)
        row = db.get_model("20260105_143022")
    assert row is not None and row["serialization_format"] == "joblib"
    model = ModelLoader(pg_url, tmp_path).load_production_model()
    frame = make_cars(5, seed=3)[list(FEATURES)]
    assert list(model.predict(frame)) == list(models.small_model().predict(frame))


def test_promoted_artifact_that_cannot_serve_is_reported_once(pg_url: str, redis_url: str,
                                                              tmp_path: Path) -> None:
    """Issue 17.5: a dict saved with joblib, stored directly and promoted. The worker keeps
    v1 and says why through predq serving and the promote report, without a traceback
    at every poll."""
    from modelstore.settings import Settings
    from producer.client import PredqClient

    models.register(pg_url, "v1")
    with ModelEvaluationDB(pg_url) as db:
        db.store_model("run-d", "weights", "Dict", artifacts.serialize({"w": [1.0, 2.0]}),
                       describe=False)
    env = worker_env(pg_url, redis_url, tmp_path)
    app = client_app(env)
    try:
        with running_workers(env, tmp_path, app=app) as (worker,), \
                PredqClient(Settings.from_env(env)) as client:
            assert _predict(app, models.rows(1)[0])["model_version"] == "v1"
            report = client.promote("weights", timeout=5.0)
            problem = report.problem() or ""
            assert "is not a model (no predict method" in problem, problem
            import time

            time.sleep(2.5)  # several generation polls (PREDQ_GENERATION_POLL=0.5)
            rows = client.serving("default")
            assert rows and all(r.version == "v1" and "not a model" in (r.error or "")
                                for r in rows), rows
            assert _predict(app, models.rows(1)[0])["model_version"] == "v1"
            log = worker.log_tail(200_000)
    finally:
        app.close()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("is not a model") <= 2, log[-3000:]
