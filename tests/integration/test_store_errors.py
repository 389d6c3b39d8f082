"""Database errors surface as predq errors that name the action and identifiers and never
carry a password."""

from __future__ import annotations

import traceback
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text

from modelstore import ModelEvaluationDB, ModelLoader
from modelstore.errors import (
    DatabaseUnavailable,
    DuplicateModelVersion,
    InvalidInput,
    PredqError,
    StoreError,
)

SECRET = "s3cr3t-Pa55word"


def _full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def test_unreachable_database_names_the_server_not_the_password() -> None:
    url = f"postgresql://predq_user:{SECRET}@127.0.0.1:1/registry"
    with pytest.raises(DatabaseUnavailable) as caught:
        ModelEvaluationDB(url)
    message = str(caught.value)
    assert "checking the schema" in message
    assert "predq_user:***@127.0.0.1:1/registry" in message
    assert "Connection refused" in message or "could not connect" in message
    assert SECRET not in _full_text(caught.value)
    loader = ModelLoader(url)
    assert loader.load_production() is None
    assert SECRET not in str(loader.fallback_reason)


def test_repr_hides_the_password(pg_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(pg_url).set(password=SECRET).render_as_string(hide_password=False)
    db = ModelEvaluationDB.__new__(ModelEvaluationDB)
    db.database_url = url
    assert SECRET not in repr(db)


def test_a_statement_error_names_the_identifiers(store_url: str,
                                                 raw_engine: Callable[[str], Engine]) -> None:
    db = ModelEvaluationDB(store_url)
    with raw_engine(store_url).begin() as conn:
        conn.execute(text("DROP TABLE model_predictions"))
        conn.execute(text("DROP TABLE model_prediction_rollups"))  # what stats read
    with pytest.raises(StoreError) as caught:
        db.store_prediction("20260105_143022", {"x": 1}, 1.0)
    message = str(caught.value)
    assert message.startswith("database error while logging predictions (rows=1): ")
    assert "model_predictions" in message  # the database's own first line
    assert isinstance(caught.value, PredqError)
    with pytest.raises(StoreError, match=r"reading prediction stats \(model_name='m'\)"):
        db.prediction_stats(model_name="m")


def test_duplicates_and_bad_arguments_are_domain_errors(store_url: str,
                                                        pipeline_bytes: bytes) -> None:
    db = ModelEvaluationDB(store_url)
    db.store_model("run-1", "v1", "RandomForest", pipeline_bytes, describe=False)
    with pytest.raises(DuplicateModelVersion,
                       match="model 'default' version 'v1' \\(run_id 'run-2'\\) is already"):
        db.store_model("run-2", "v1", "RandomForest", pipeline_bytes, describe=False)
    with pytest.raises(InvalidInput, match="model_binary: expected non-empty bytes"):
        db.store_model("run-3", "v3", "RandomForest", b"")
    with pytest.raises(InvalidInput, match="model_version: expected a non-empty string"):
        db.store_model("run-3", "v" * 51, "RandomForest", pipeline_bytes)
    with pytest.raises(InvalidInput, match=r"metrics\.rmse: expected a finite number"):
        db.store_model("run-3", "v3", "RandomForest", pipeline_bytes, rmse=float("nan"))
