"""ModelEvaluationDB.store_model(upload_request_id=...): an upload stored once per (model name,
request id), whatever its bytes, run or version the second time; promoted at most once; two
racing copies leave one row and both get the winner's version. On SQLite and Postgres."""

from __future__ import annotations

import threading

import pytest

from modelstore import ModelEvaluationDB
from modelstore.errors import DuplicateModelVersion, InvalidInput
from modelstore.stored import StoredModel


def test_the_same_request_id_returns_the_first_version_and_promotes_once(
        store_url: str, pipeline_bytes: bytes, pipeline_v2_bytes: bytes) -> None:
    db = ModelEvaluationDB(store_url)
    first = db.store_model("run-a", None, "RandomForest", pipeline_bytes, is_production=True,
                           upload_request_id="upload-1")
    # Redelivered with other bytes, run and version: nothing new stored or promoted.
    again = db.store_model("run-b", "other", "RandomForest", pipeline_v2_bytes,
                           is_production=True, upload_request_id="upload-1")
    assert first.reused is False and first.promotion is not None
    assert again.reused is True
    assert (again.model_version, again.sha256, again.artifact_id) == (
        first.model_version, first.sha256, first.artifact_id)
    assert again.promotion is not None and again.promotion.generation == 1
    assert [m["model_version"] for m in db.list_models()] == [first.model_version]
    assert len(db.promotion_history()) == 1
    assert db.find_request("default", "upload-1") == again
    assert db.find_request("default", "upload-2") is None

    # The id is per model name; without one, a taken version is still refused.
    other = db.store_model("run-c", first.model_version, "RandomForest", pipeline_bytes,
                           model_name="other-model", upload_request_id="upload-1")
    assert other.reused is False
    with pytest.raises(DuplicateModelVersion):
        db.store_model("run-d", first.model_version, "RandomForest", pipeline_bytes)
    with pytest.raises(InvalidInput, match="upload_request_id"):
        db.store_model("run-e", None, "RandomForest", pipeline_bytes,
                       upload_request_id="x" * 129)


def test_two_racing_copies_store_one_row(store_url: str, pipeline_bytes: bytes) -> None:
    ModelEvaluationDB(store_url)  # the schema, before the race
    results: list[StoredModel] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(4)

    def upload(n: int) -> None:
        gate.wait()
        try:
            results.append(ModelEvaluationDB(store_url).store_model(
                f"run-{n}", f"v{n}", "RandomForest", pipeline_bytes, is_production=True,
                upload_request_id="race-1"))
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert len({r.model_version for r in results}) == 1
    assert sorted(r.reused for r in results) == [False, True, True, True]
    db = ModelEvaluationDB(store_url)
    assert len(db.list_models()) == 1
    assert len(db.promotion_history()) == 1


def test_a_request_id_answered_by_an_earlier_upload_keeps_that_answer(
        store_url: str, pipeline_bytes: bytes, pipeline_v2_bytes: bytes) -> None:
    db = ModelEvaluationDB(store_url)
    earlier = db.store_model("run-a", "v1", "RandomForest", pipeline_bytes)
    # A new request id whose bytes and run were stored before: the earlier version, and the
    # id is recorded on it, so a re-send with other bytes gets the same answer.
    found = db.find_upload("default", earlier.sha256, "run-a", "late-id")
    assert found is not None and found.model_version == "v1" and found.reused
    again = db.store_model("run-b", "v2", "RandomForest", pipeline_v2_bytes,
                           upload_request_id="late-id")
    assert (again.model_version, again.reused) == ("v1", True)
    # An artifact keeps the first id recorded on it.
    assert db.find_upload("default", earlier.sha256, "run-a", "other-id") == found
    assert db.find_request("default", "other-id") is None
    assert [m["model_version"] for m in db.list_models()] == ["v1"]
    # An id another artifact already holds (a twin won the race): that artifact's answer.
    taken = db.store_model("run-c", "v3", "RandomForest", pipeline_v2_bytes,
                           upload_request_id="taken")
    unclaimed = db.store_model("run-d", "v4", "RandomForest", pipeline_bytes)
    assert db.find_upload("default", unclaimed.sha256, "run-d", "taken") == db.find_request(
        "default", "taken")
    assert taken.model_version == "v3"
