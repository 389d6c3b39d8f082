"""PredqClient against a stub Celery app (no broker): payloads, ordering, errors, promote
confirmation, registration routes and backfill. Store-side calls use a SQLite file."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest

from modelstore import artifacts
from modelstore.db import ModelEvaluationDB
from modelstore.errors import InvalidInput
from modelstore.settings import Settings
from producer import PredictionError, PredqClient, RequestRejected, ResultTimeout, TaskFailed
from producer.errors import BrokerUnavailable
from producer.sample import FEATURES, make_cars, train_pipeline
from producer.testing import StubApp

ROW = {"year": 2020, "mileage": 50_000.0, "brand": "Toyota", "condition": "Good",
       "engine_size": 2.5, "transmission": "Automatic"}


def settings_for(db_url: str = "sqlite:///unused.db", **env: str) -> Settings:
    return Settings.from_env({"DATABASE_URL": db_url,
                              "PREDQ_BROKER_URL": "redis://127.0.0.1:6379/15", **env})


def fake_predict(kwargs: dict[str, Any]) -> dict[str, Any]:
    if "mileage" not in kwargs["features"]:
        return {"request_id": kwargs["request_id"], "error": "features.mileage: missing"}
    return {"request_id": kwargs["request_id"], "model_version": "v1", "model_sha256": "ab",
            "prediction": float(kwargs["features"]["year"]), "confidence": None}


def sent_rows(kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a predict_batch message in either shape (row dicts or columnar)."""
    if "rows" in kwargs:
        return kwargs["rows"]  # type: ignore[no-any-return]
    return [dict(zip(kwargs["columns"], values, strict=True)) for values in kwargs["data"]]


def fake_batch(kwargs: dict[str, Any]) -> dict[str, Any]:
    results = [fake_predict({"features": row, "request_id": rid})
               for row, rid in zip(sent_rows(kwargs), kwargs["request_ids"], strict=True)]
    for r in results:
        r.pop("model_version", None)
        r.pop("model_sha256", None)
    # Answer out of order: the client must put results back in input order.
    return {"model_version": "v1", "model_sha256": "ab", "results": results[::-1]}


def client_with(app: StubApp, settings: Settings | None = None) -> PredqClient:
    return PredqClient(settings or settings_for(), app=app)


def test_predict_sends_contract_kwargs_and_makes_a_request_id() -> None:
    app = StubApp(tasks={"predq.predict": fake_predict})
    result = client_with(app).predict(ROW)
    sent = app.sent[0]
    assert sent.name == "predq.predict"
    assert sent.kwargs["features"] == ROW and sent.kwargs["model"] == "default"
    assert len(sent.kwargs["request_id"]) == 36 and "version" not in sent.kwargs
    assert result["request_id"] == sent.kwargs["request_id"]
    assert result["model_version"] == "v1" and result["prediction"] == 2020.0


def test_predict_pins_a_version_and_keeps_the_callers_request_id() -> None:
    app = StubApp(tasks={"predq.predict": fake_predict})
    client_with(app).predict(ROW, model="cars", request_id="r-1", version="v0")
    kwargs = dict(app.sent[0].kwargs)
    # Stamped by the producer: the logged row's time and partition key (issue 11).
    stamped = datetime.fromisoformat(kwargs.pop("request_time"))
    assert abs(stamped - datetime.now(UTC).replace(tzinfo=None)) < timedelta(minutes=1)
    assert kwargs == {"features": ROW, "model": "cars", "request_id": "r-1", "version": "v0"}


def test_predict_item_error_raises_with_the_workers_message() -> None:
    app = StubApp(tasks={"predq.predict": fake_predict})
    row = {k: v for k, v in ROW.items() if k != "mileage"}
    with pytest.raises(PredictionError, match=r"request r-9: features\.mileage: missing") as info:
        client_with(app).predict(row, request_id="r-9")
    assert info.value.request_id == "r-9"


def test_predict_timeout_names_the_queue_and_masks_the_broker_password() -> None:
    settings = settings_for(PREDQ_BROKER_URL="redis://:s3cret@127.0.0.1:6379/15")
    with pytest.raises(ResultTimeout) as info:
        client_with(StubApp(), settings).predict(ROW, timeout=0.1)
    message = str(info.value)
    assert "queue 'predq'" in message and "***" in message and "s3cret" not in message


def test_a_task_that_raised_on_the_worker_becomes_task_failed() -> None:
    app = StubApp(tasks={"predq.predict": lambda kw: ValueError("boom")})
    with pytest.raises(TaskFailed, match="ValueError: boom"):
        client_with(app).predict(ROW)


def test_non_json_features_fail_before_anything_is_sent() -> None:
    with pytest.raises(InvalidInput, match="features: expected a dict"):
        client_with(StubApp()).predict([1, 2])  # type: ignore[arg-type]


def test_predict_many_chunks_and_returns_input_order_with_versions() -> None:
    app = StubApp(tasks={"predq.predict_batch": fake_batch})
    frame = make_cars(5, seed=3)[list(FEATURES)]
    results = client_with(app).predict_many(frame, chunk_size=2, progress=False)
    assert [s.name for s in app.sent] == ["predq.predict_batch"] * 3
    # Columnar by default: each feature name once per chunk, not once per row (issue 16).
    assert [s.kwargs["columns"] for s in app.sent] == [list(FEATURES)] * 3
    assert [len(s.kwargs["data"]) for s in app.sent] == [2, 2, 1]
    assert all("rows" not in s.kwargs for s in app.sent)
    sent_ids = [rid for s in app.sent for rid in s.kwargs["request_ids"]]
    assert [r["request_id"] for r in results] == sent_ids
    assert [r["prediction"] for r in results] == [float(y) for y in frame["year"]]
    assert all(r["model_version"] == "v1" and r["model_sha256"] == "ab" for r in results)


def test_predict_many_keeps_row_errors_in_place_without_a_version() -> None:
    app = StubApp(tasks={"predq.predict_batch": fake_batch})
    rows = [ROW, {"year": 2001}, ROW]
    results = client_with(app).predict_many(rows, request_ids=["a", "b", "c"], progress=False)
    assert [r["request_id"] for r in results] == ["a", "b", "c"]
    assert results[1] == {"request_id": "b", "error": "features.mileage: missing"}
    assert results[0]["model_version"] == "v1" and "error" not in results[2]


def test_predict_many_sends_rows_with_different_features_as_row_dicts() -> None:
    # A feature missing from one row must stay "missing", not become a null in a column.
    app = StubApp(tasks={"predq.predict_batch": fake_batch})
    client_with(app).predict_many([ROW, {"year": 2001}], progress=False)
    assert app.sent[0].kwargs["rows"] == [ROW, {"year": 2001}]
    assert "columns" not in app.sent[0].kwargs


def test_predict_many_row_errors_name_the_callers_row_not_the_chunks() -> None:
    def batch(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"model_version": "v1", "results": [
            {"request_id": rid, "error": f"rows[{i}].features.mileage: missing"}
            for i, rid in enumerate(kwargs["request_ids"])]}

    app = StubApp(tasks={"predq.predict_batch": batch})
    results = client_with(app).predict_many([ROW] * 5, chunk_size=2, progress=False)
    assert [r["error"] for r in results] == [
        f"rows[{i}].features.mileage: missing" for i in range(5)]


def test_predict_many_whole_batch_error_raises_naming_the_rows() -> None:
    app = StubApp(tasks={"predq.predict_batch": lambda kw: {"error": "rows: too many",
                                                           "results": []}})
    with pytest.raises(PredictionError, match=r"rows 0-1: rows: too many"):
        client_with(app).predict_many([ROW, ROW], progress=False)


def test_predict_many_rejects_bad_chunk_sizes_and_id_counts() -> None:
    client = client_with(StubApp(), settings_for(PREDQ_MAX_ROWS_PER_TASK="10"))
    with pytest.raises(InvalidInput, match=r"chunk_size: must be between 1 and 10"):
        client.predict_many([ROW], chunk_size=11)
    with pytest.raises(InvalidInput, match=r"request_ids: expected 2 ids"):
        client.predict_many([ROW, ROW], request_ids=["only-one"])
    with pytest.raises(InvalidInput, match=r"rows\[1\]: expected a dict"):
        client.predict_many([ROW, 5])


def test_predict_many_detects_a_short_answer() -> None:
    app = StubApp(tasks={"predq.predict_batch": lambda kw: {"model_version": "v1",
                                                           "results": []}})
    with pytest.raises(TaskFailed, match="expected 2 results, got 0"):
        client_with(app).predict_many([ROW, ROW], progress=False)


def test_send_is_fire_and_forget_and_returns_request_ids() -> None:
    app = StubApp()
    client = client_with(app)
    one = client.send(ROW, request_ids=["mine"])
    many = client.send([ROW] * 3, chunk_size=2)
    assert one == ["mine"] and len(many) == 3 and len(set(many)) == 3
    assert [s.name for s in app.sent] == ["predq.predict", "predq.predict_batch",
                                          "predq.predict_batch"]
    assert all(s.ignore_result for s in app.sent)
    assert app.sent[1].kwargs["request_ids"] + app.sent[2].kwargs["request_ids"] == many


def test_unreachable_broker_is_a_clear_error_with_the_password_masked() -> None:
    settings = settings_for(PREDQ_BROKER_URL="redis://:s3cret@127.0.0.1:1/0",
                            PREDQ_CONNECT_TIMEOUT="1")
    with PredqClient(settings) as client, pytest.raises(BrokerUnavailable) as info:
        client.send(ROW)
    message = str(info.value)
    assert "redis://:***@127.0.0.1:1/0" in message and "s3cret" not in message


# -- registration -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model() -> Any:
    return train_pipeline(make_cars(200, seed=1), n_estimators=2, max_depth=3)


def store_ok(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"model_version": kwargs["version"] or "20260101_000000", "sha256": "x",
            "size_bytes": 1, "generation": None}


def test_register_object_travels_as_base64_with_its_feature_schema(small_model: Any) -> None:
    app = StubApp(tasks={"predq.store_model": store_ok})
    version = client_with(app).register_model(small_model, "RandomForest", "run-1",
                                              metrics={"rmse": 12.5}, version="v7",
                                              direct=False)
    kwargs = app.sent[0].kwargs
    assert version == "v7" and kwargs["artifact_path"] is None
    restored = joblib.load(io.BytesIO(base64.b64decode(kwargs["artifact_b64"])))
    frame = make_cars(3, seed=9)[list(FEATURES)]
    assert list(restored.predict(frame)) == list(small_model.predict(frame))
    names = [c["name"] for c in kwargs["feature_schema"]["columns"]]
    assert names == list(FEATURES) and kwargs["metrics"] == {"rmse": 12.5}
    assert kwargs["promote"] is False and kwargs["model"] == "default"


def test_register_file_goes_by_path_when_workers_share_the_filesystem(
        small_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump(small_model, path)
    app = StubApp(tasks={"predq.store_model": store_ok})
    monkeypatch.setenv("PREDQ_SHARED_ARTIFACT_PATHS", "1")
    client_with(app).register_model(path, "RandomForest", "run-1", direct=False)
    assert app.sent[0].kwargs["artifact_path"] == str(path.resolve())
    assert app.sent[0].kwargs["artifact_b64"] is None
    monkeypatch.setenv("PREDQ_SHARED_ARTIFACT_PATHS", "0")
    client_with(app).register_model(path, "RandomForest", "run-2", direct=False)
    assert app.sent[1].kwargs["artifact_path"] is None
    assert base64.b64decode(app.sent[1].kwargs["artifact_b64"]) == path.read_bytes()


def test_register_too_big_for_the_task_without_a_shared_path(
        small_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDQ_SHARED_ARTIFACT_PATHS", "0")
    client = client_with(StubApp(), settings_for(PREDQ_MAX_ARTIFACT_B64_BYTES="100"))
    with pytest.raises(InvalidInput, match="PREDQ_MAX_ARTIFACT_B64_BYTES=100"):
        client.register_model(small_model, "RandomForest", "run-1", direct=False)


def test_register_auto_falls_back_to_a_direct_write_when_too_big(
        small_model: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDQ_SHARED_ARTIFACT_PATHS", "0")
    app = StubApp()
    client = client_with(app, settings_for(sqlite_url, PREDQ_MAX_ARTIFACT_B64_BYTES="100"))
    version = client.register_model(small_model, "RandomForest", "run-1", promote=True)
    assert app.sent == []
    pointer = ModelEvaluationDB(sqlite_url).production_pointer()
    assert pointer is not None and pointer.model_version == version


def test_register_worker_refusal_raises_its_message(small_model: Any) -> None:
    app = StubApp(tasks={"predq.store_model": lambda kw: {"error": "run_id: taken"}})
    with pytest.raises(RequestRejected, match="store_model run_id='r': run_id: taken"):
        client_with(app).register_model(small_model, "RandomForest", "r", direct=False)


def test_register_rejects_non_finite_metrics_before_sending(small_model: Any) -> None:
    app = StubApp(tasks={"predq.store_model": store_ok})
    with pytest.raises(InvalidInput, match=r"metrics\.rmse: expected a finite number"):
        client_with(app).register_model(small_model, "RF", "r", metrics={"rmse": float("nan")})
    assert app.sent == []


def test_register_direct_stores_metrics_and_schema(small_model: Any, sqlite_url: str) -> None:
    client = client_with(StubApp(), settings_for(sqlite_url))
    version = client.register_model(small_model, "RandomForest", "run-d", direct=True,
                                    metrics={"rmse": 3.0}, model="cars")
    row = ModelEvaluationDB(sqlite_url).get_model(version, "cars")
    assert row is not None and row["run_id"] == "run-d" and row["rmse_score"] == 3.0
    assert [c["name"] for c in row["feature_schema"]["columns"]] == list(FEATURES)
    assert ModelEvaluationDB(sqlite_url).production_pointer("cars") is None


def test_register_passes_request_id_only_when_given(small_model: Any) -> None:
    app = StubApp(tasks={"predq.store_model": store_ok})
    client = client_with(app)
    client.register_model(small_model, "RF", "r", direct=False, format="skops")
    client.register_model(small_model, "RF", "r", direct=False, format="skops",
                          request_id="upload-7")
    assert "request_id" not in app.sent[0].kwargs
    assert app.sent[1].kwargs["request_id"] == "upload-7"


def test_register_direct_with_a_request_id_stores_and_promotes_once(
        small_model: Any, sqlite_url: str) -> None:
    client = client_with(StubApp(), settings_for(sqlite_url))
    first = client.register_model(small_model, "RF", "run-1", direct=True, request_id="u-1")
    # Retried with promote=True and another run: the same version, promoted now, once.
    for run in ("run-2", "run-3"):
        assert client.register_model(small_model, "RF", run, direct=True, promote=True,
                                     request_id="u-1") == first
    db = ModelEvaluationDB(sqlite_url)
    assert [m["model_version"] for m in db.list_models()] == [first]
    assert [h["to_version"] for h in db.promotion_history()] == [first]


# -- promote / rollback / serving -----------------------------------------------------------


def node_reply(node: str, pids_versions: dict[int, tuple[str, int]],
               model: str = "default") -> dict[str, Any]:
    processes = [{"pid": pid, "models": {model: {"model_version": v, "generation": g,
                                                 "source": "database", "sha256": "s"}}}
                 for pid, (v, g) in pids_versions.items()]
    return {node: {"hostname": "h", "processes": processes}}


def two_versions(url: str, small_model: Any) -> tuple[str, str]:
    db = ModelEvaluationDB(url)
    buffer = io.BytesIO()
    joblib.dump(small_model, buffer)
    data = buffer.getvalue()
    v1 = db.store_model("r1", "v1", "RF", data, is_production=True).model_version
    v2 = db.store_model("r2", "v2", "RF", data).model_version
    return v1, v2


def test_promote_waits_until_every_process_serves_the_new_version(
        sqlite_url: str, small_model: Any) -> None:
    two_versions(sqlite_url, small_model)
    polls = {"n": 0}

    def serving(_args: dict[str, Any]) -> list[dict[str, Any]]:
        polls["n"] += 1
        late = ("v2", 2) if polls["n"] >= 2 else ("v1", 1)
        return [node_reply("w1@h", {11: ("v2", 2), 12: late}), node_reply("w2@h", {21: late})]

    app = StubApp(broadcasts={
        "predq_promote": lambda a: [node_reply("w1@h", {11: ("v1", 1), 12: ("v1", 1)}),
                                    node_reply("w2@h", {21: ("v1", 1)})],
        "predq_serving": serving})
    report = client_with(app, settings_for(sqlite_url)).promote("v2", timeout=5.0)
    assert report.ok and report.problem() is None
    assert (report.from_version, report.to_version, report.generation) == ("v1", "v2", 2)
    assert sorted(r.pid or 0 for r in report.confirmed) == [11, 12, 21]
    promote_args = app.broadcasts_sent[0].arguments
    assert promote_args["model"] == "default" and promote_args["generation"] == 2
    assert all(b.limit == 2 for b in app.broadcasts_sent[1:])
    pointer = ModelEvaluationDB(sqlite_url).production_pointer()
    assert pointer is not None and pointer.model_version == "v2"


def test_promote_names_the_processes_that_did_not_confirm(
        sqlite_url: str, small_model: Any) -> None:
    two_versions(sqlite_url, small_model)
    stuck = [node_reply("w1@h", {11: ("v2", 2)}), node_reply("w2@h", {21: ("v1", 1)})]
    app = StubApp(broadcasts={"predq_promote": lambda a: stuck,
                              "predq_serving": lambda a: stuck})
    report = client_with(app, settings_for(sqlite_url)).promote("v2", timeout=0.5)
    assert not report.ok
    assert [r.label() for r in report.unconfirmed] == ["w2@h pid 21"]
    problem = report.problem() or ""
    assert "1 process(es) did not confirm: w2@h pid 21 (serves 'v1', generation 1)" in problem


def test_promote_with_no_worker_reports_it_but_moves_the_database(
        sqlite_url: str, small_model: Any) -> None:
    two_versions(sqlite_url, small_model)
    report = client_with(StubApp(), settings_for(sqlite_url)).promote("v2", timeout=0.3)
    assert not report.ok and "no worker replied" in (report.problem() or "")
    pointer = ModelEvaluationDB(sqlite_url).production_pointer()
    assert pointer is not None and pointer.model_version == "v2"


def test_rollback_moves_back_and_confirms(sqlite_url: str, small_model: Any) -> None:
    two_versions(sqlite_url, small_model)
    ModelEvaluationDB(sqlite_url).set_production_model("v2")
    back = [node_reply("w1@h", {11: ("v1", 3)})]
    app = StubApp(broadcasts={"predq_promote": lambda a: back,
                              "predq_serving": lambda a: back})
    report = client_with(app, settings_for(sqlite_url)).rollback(timeout=2.0)
    assert report.ok and report.action == "rollback" and report.to_version == "v1"


def test_serving_flattens_replies_per_process_and_reports_errors() -> None:
    replies = [node_reply("b@h", {7: ("v1", 1), 3: ("v1", 1)}),
               {"a@h": {"error": "No such control command: predq_serving"}}]
    app = StubApp(broadcasts={"predq_serving": lambda a: replies})
    rows = client_with(app).serving()
    assert [(r.node, r.pid) for r in rows] == [("a@h", None), ("b@h", 3), ("b@h", 7)]
    assert rows[0].error == "No such control command: predq_serving"
    assert rows[1].version == "v1" and rows[1].generation == 1


def test_reload_broadcasts_the_model_name() -> None:
    app = StubApp(broadcasts={"predq_reload": lambda a: [node_reply("w@h", {1: ("v1", 1)})]})
    rows = client_with(app).reload("cars")
    assert app.broadcasts_sent[0].arguments == {"model": "cars"}
    assert rows[0].node == "w@h"


# -- backfill ------------------------------------------------------------------------------


def fake_backfill(kwargs: dict[str, Any]) -> dict[str, Any]:
    known = [a for a in kwargs["actuals"] if a["request_id"].startswith("k")]
    unknown = [a["request_id"] for a in kwargs["actuals"] if a not in known]
    return {"updated": len(known), "unknown": unknown, "invalid": {}}


def test_backfill_from_a_mapping_in_chunks_sums_the_answers() -> None:
    app = StubApp(tasks={"predq.backfill_actuals": fake_backfill})
    actuals: dict[str, Any] = {"k1": 1.0, "k2": 2, "u1": 3.5, "bad": "x", "inf": float("inf")}
    outcome = client_with(app).backfill(actuals, chunk_size=2)
    assert outcome["updated"] == 2 and outcome["unknown"] == ["u1"]
    assert set(outcome["invalid"]) == {"bad", "inf"}
    assert [len(s.kwargs["actuals"]) for s in app.sent] == [2, 1]


def test_backfill_from_csv_reports_unparsable_lines(tmp_path: Path) -> None:
    path = tmp_path / "actuals.csv"
    pd.DataFrame({"request_id": ["k1", "u1", "k2", ""],
                  "actual_value": ["10.5", "3", "oops", "4"]}).to_csv(path, index=False)
    app = StubApp(tasks={"predq.backfill_actuals": fake_backfill})
    outcome = client_with(app).backfill(path)
    assert outcome["updated"] == 1 and outcome["unknown"] == ["u1"]
    assert "actual_value 'oops' is not a number" in outcome["invalid"]["k2"]
    assert any("empty request_id" in m for m in outcome["invalid"].values())


def test_backfill_csv_without_the_columns_names_them(tmp_path: Path) -> None:
    path = tmp_path / "actuals.csv"
    path.write_text("id,value\na,1\n")
    with pytest.raises(InvalidInput, match=r"missing column.*actual_value, request_id"):
        client_with(StubApp()).backfill(path)


def test_close_closes_only_an_app_the_client_built() -> None:
    app = StubApp()
    client_with(app).close()
    assert not app.closed
    client = PredqClient(settings_for())
    built = client.app
    assert built.main == "predq-producer" and built.conf.task_serializer == "json"
    client.close()
    assert client._app is None


def test_construction_builds_no_app_and_opens_no_connection() -> None:
    client = PredqClient(settings_for(PREDQ_BROKER_URL="redis://127.0.0.1:1/0"))
    assert client._app is None and client._db is None


def test_register_auto_writes_unsigned_pickle_directly_and_sends_the_rest(
        small_model: Any, sqlite_url: str) -> None:
    """Workers refuse unsigned pickle from the broker: without a key, the default route
    for joblib is the (trusted) database; skops travels by task, and so does joblib signed
    with the pipeline's key (first key of the ring)."""
    app = StubApp(tasks={"predq.store_model": store_ok})
    client = client_with(app, settings_for(sqlite_url))
    version = client.register_model(small_model, "RandomForest", "run-j")
    assert app.sent == [] and ModelEvaluationDB(sqlite_url).get_model(version) is not None
    client.register_model(small_model, "RandomForest", "run-s", format="skops")
    sent = app.sent[0].kwargs
    assert sent["format"] == "skops" and sent["signature"] is None
    assert base64.b64decode(sent["artifact_b64"])[:2] == b"PK"
    keyed = StubApp(tasks={"predq.store_model": store_ok})
    client_with(keyed, settings_for(sqlite_url, PREDQ_SIGNING_KEY="new,old")).register_model(
        small_model, "RandomForest", "run-k")
    signed = keyed.sent[0].kwargs
    data = base64.b64decode(signed["artifact_b64"])
    assert signed["format"] == "joblib"
    assert signed["signature"] == artifacts.sign(artifacts.sha256_hex(data), b"new")
