"""Promotion and rollback: pointer, generation and history move together; rollback walks
the stack of promotions; refusals change nothing."""

from __future__ import annotations

import pytest

from modelstore import ModelEvaluationDB
from modelstore.errors import ModelNotFound, RollbackError


@pytest.fixture
def db(store_url: str, pipeline_bytes: bytes) -> ModelEvaluationDB:
    store = ModelEvaluationDB(store_url)
    for n in range(1, 5):
        store.store_model(f"run-{n}", f"v{n}", "RandomForest", pipeline_bytes + bytes(n),
                          describe=False)
    return store


def _state(db: ModelEvaluationDB) -> tuple[object, ...]:
    flags = sorted(m["model_version"] for m in db.list_models() if m["is_production"])
    return db.production_pointer(), db.promotion_history(), flags


def test_rollback_walks_back_the_promotions(db: ModelEvaluationDB) -> None:
    for version in ("v1", "v2", "v3"):
        db.set_production_model(version, by="alice", reason=f"ship {version}")
    back = db.rollback_production_model(by="bob", reason="v3 is slow")
    assert (back.from_version, back.to_version, back.action) == ("v3", "v2", "rollback")
    assert db.rollback_production_model().to_version == "v1"
    with pytest.raises(RollbackError, match="no production version before 'v1'"):
        db.rollback_production_model()
    # A rolled-back version is not returned to: v1 -> v4, rollback -> v1 again.
    db.set_production_model("v4")
    assert db.rollback_production_model().to_version == "v1"

    history = db.promotion_history()  # newest first
    assert [(h["action"], h["from_version"], h["to_version"], h["generation"])
            for h in reversed(history)] == [
        ("promote", None, "v1", 1), ("promote", "v1", "v2", 2), ("promote", "v2", "v3", 3),
        ("rollback", "v3", "v2", 4), ("rollback", "v2", "v1", 5), ("promote", "v1", "v4", 6),
        ("rollback", "v4", "v1", 7)]
    third = history[-3]
    assert (third["promoted_by"], third["reason"]) == ("alice", "ship v3")
    assert history[-4]["promoted_by"] == "bob" and history[-4]["reason"] == "v3 is slow"
    assert all(h["promoted_at"] is not None for h in history)
    pointer, _h, flags = _state(db)
    assert (pointer.model_version, pointer.generation, flags) == ("v1", 7, ["v1"])


def test_rollback_to_an_explicit_target(db: ModelEvaluationDB) -> None:
    db.set_production_model("v1")
    db.set_production_model("v2")
    moved = db.rollback_production_model("v4")
    assert (moved.from_version, moved.to_version, moved.generation) == ("v2", "v4", 3)


def test_rollback_with_nothing_in_production(db: ModelEvaluationDB) -> None:
    with pytest.raises(RollbackError, match="model 'default' has no production version"):
        db.rollback_production_model()


def test_unknown_version_changes_nothing(db: ModelEvaluationDB) -> None:
    db.set_production_model("v2")
    before = _state(db)
    with pytest.raises(ModelNotFound, match="model 'default' has no version 'v9'; nothing"):
        db.set_production_model("v9")
    with pytest.raises(ModelNotFound, match="model 'other' has no version 'v1'"):
        db.set_production_model("v1", model_name="other")
    with pytest.raises(ModelNotFound):
        db.rollback_production_model("v9")
    assert _state(db) == before


def test_store_with_is_production_moves_the_pointer(db: ModelEvaluationDB,
                                                    pipeline_bytes: bytes) -> None:
    db.set_production_model("v1")
    stored = db.store_model("run-5", "v5", "RandomForest", pipeline_bytes + b"5",
                            is_production=True, describe=False)
    assert stored.promotion is not None
    assert (stored.promotion.from_version, stored.promotion.generation) == ("v1", 2)
    pointer, history, flags = _state(db)
    assert (pointer.model_version, flags) == ("v5", ["v5"])  # the old flag is cleared
    assert history[0]["action"] == "store"


def test_model_names_are_independent(db: ModelEvaluationDB, pipeline_bytes: bytes) -> None:
    db.store_model("run-o", "v1", "RandomForest", pipeline_bytes, model_name="other",
                   describe=False)
    db.set_production_model("v1")
    other = db.set_production_model("v1", model_name="other")
    assert other.generation == 1
    flagged = {(m["model_name"], m["model_version"]) for m in db.list_models()
               if m["is_production"]}
    assert flagged == {("default", "v1"), ("other", "v1")}
    assert [m["model_name"] for m in db.list_models(model_name="other")] == ["other"]
    assert db.production_pointer("other").generation == 1
