"""ModelLoader's fallback order, each case flagged: database production row ->
$PREDQ_MODEL_DIR/production/model.pkl -> $PREDQ_MODEL_DIR/model.pkl -> None with a warning;
and an unreachable database costs a bounded connect timeout, never a hang."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelstore import ModelEvaluationDB, ModelLoader
from modelstore.errors import ModelNotFound
from tests.support.silent import silent_listener

REFUSED_URL = "postgresql://postgres@127.0.0.1:1/x"


def _files(model_dir: Path, pipeline_bytes: bytes, seed_dict_bytes: bytes) -> None:
    (model_dir / "production").mkdir()
    (model_dir / "production" / "model.pkl").write_bytes(seed_dict_bytes)
    (model_dir / "model.pkl").write_bytes(pipeline_bytes)


def test_database_production_row_comes_first(store_url: str, model_dir: Path,
                                             pipeline_bytes: bytes, seed_dict_bytes: bytes
                                             ) -> None:
    _files(model_dir, pipeline_bytes, seed_dict_bytes)
    with ModelEvaluationDB(store_url) as db:
        db.store_model("run-1", "v1", "RandomForest", pipeline_bytes, is_production=True)
    loader = ModelLoader(store_url)
    loaded = loader.load_production()
    assert loaded is not None and loaded.model_version == "v1"
    assert (loader.fallback_used, loader.source, loader.fallback_reason) == (
        False, "database", None)
    assert loaded.generation == 1 and loaded.path is None
    assert loaded.feature_schema is not None  # captured at store time
    assert [c["name"] for c in loaded.feature_schema["columns"]][:2] == ["year", "mileage"]


def test_no_production_row_falls_back_to_production_file(
        store_url: str, model_dir: Path, pipeline_bytes: bytes, seed_dict_bytes: bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    _files(model_dir, pipeline_bytes, seed_dict_bytes)
    with ModelEvaluationDB(store_url) as db:
        db.store_model("run-1", "v1", "RandomForest", pipeline_bytes)  # not production
    loader = ModelLoader(store_url)
    with caplog.at_level(logging.WARNING, logger="modelstore.loader"):
        artifact = loader.load_production_model()
    assert set(artifact) == {"model", "preprocessor", "scaler"}
    assert loader.fallback_used is True and loader.source == "filesystem"
    assert "NoProductionModel" in str(loader.fallback_reason)
    assert loader.last_loaded is not None
    assert loader.last_loaded.path == model_dir / "production" / "model.pkl"
    assert loader.last_loaded.model_version.startswith("file:")
    assert any("FALLBACK" in r.getMessage() and "production/model.pkl" in r.getMessage()
               for r in caplog.records)


def test_then_the_top_level_model_file(store_url: str, model_dir: Path,
                                       pipeline_bytes: bytes) -> None:
    (model_dir / "model.pkl").write_bytes(pipeline_bytes)
    loader = ModelLoader(store_url)
    loaded = loader.load_production()
    assert loaded is not None and loaded.path == model_dir / "model.pkl"
    assert loader.fallback_used and loader.source == "filesystem"
    assert hasattr(loaded.artifact, "predict")


def test_then_none_with_a_warning(store_url: str, model_dir: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    loader = ModelLoader(store_url)
    with caplog.at_level(logging.WARNING, logger="modelstore.loader"):
        assert loader.load_production_model() is None
    assert (loader.fallback_used, loader.source) == (True, None)
    assert "NoProductionModel" in str(loader.fallback_reason)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no model available" in w and str(model_dir) in w for w in warnings)


def test_model_dir_defaults_to_environment(store_url: str, model_dir: Path,
                                           pipeline_bytes: bytes) -> None:
    (model_dir / "model.pkl").write_bytes(pipeline_bytes)
    assert ModelLoader(store_url).model_dir == model_dir  # from PREDQ_MODEL_DIR
    assert ModelLoader(store_url).load_production_model() is not None


def test_a_corrupt_production_file_is_skipped_for_the_next(
        store_url: str, model_dir: Path, pipeline_bytes: bytes) -> None:
    (model_dir / "production").mkdir()
    (model_dir / "production" / "model.pkl").write_bytes(b"not a pickle")
    (model_dir / "production" / "model.pkl.sha256").write_text("0" * 64)
    (model_dir / "model.pkl").write_bytes(pipeline_bytes)
    loader = ModelLoader(store_url)
    loaded = loader.load_production()
    assert loaded is not None and loaded.path == model_dir / "model.pkl"


def test_unreachable_database_falls_back_quickly(model_dir: Path, pipeline_bytes: bytes) -> None:
    (model_dir / "model.pkl").write_bytes(pipeline_bytes)
    loader = ModelLoader(REFUSED_URL)
    loaded = loader.load_production()
    assert loaded is not None and loaded.path == model_dir / "model.pkl"
    assert loader.fallback_used and "DatabaseUnavailable" in str(loader.fallback_reason)
    assert "127.0.0.1" in str(loader.fallback_reason)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a hung database server."""
    with silent_listener() as port:
        yield port


def test_a_hung_database_costs_the_connect_timeout_not_a_hang(
        silent_server: int, model_dir: Path, pipeline_bytes: bytes) -> None:
    (model_dir / "model.pkl").write_bytes(pipeline_bytes)
    loader = ModelLoader(f"postgresql://postgres@127.0.0.1:{silent_server}/x",
                         connect_timeout_s=2)
    started = time.monotonic()
    loaded = loader.load_production()
    elapsed = time.monotonic() - started
    assert loaded is not None and loader.fallback_used
    assert "DatabaseUnavailable" in str(loader.fallback_reason)
    # Bounded by the timeout (libpq may try twice); the point is "not a hang", not speed.
    assert elapsed < 30, f"fallback took {elapsed:.1f} s with a 2 s connect timeout"


def test_unknown_version_is_a_clear_error(store_url: str, model_dir: Path) -> None:
    loader = ModelLoader(store_url)
    with pytest.raises(ModelNotFound, match="model 'default' has no version 'nope'"):
        loader.load_model_by_version("nope")
    assert loader.load_latest_model() is None


def test_memory_cache_is_keyed_by_version_and_digest(store_url: str, model_dir: Path,
                                                     pipeline_bytes: bytes,
                                                     pipeline_v2_bytes: bytes) -> None:
    with ModelEvaluationDB(store_url) as db:
        db.store_model("run-1", "v1", "RandomForest", pipeline_bytes, is_production=True)
        db.store_model("run-2", "v2", "RandomForest", pipeline_v2_bytes)
    loader = ModelLoader(store_url)
    first = loader.load_production()
    assert loader.load_production() is first  # served from memory
    assert loader.load_version("v2") is not first
    with ModelEvaluationDB(store_url) as db:
        db.set_production_model("v2")
    second = loader.load_production()
    assert second is not None and second.model_version == "v2" and second.generation == 2
    assert loader.load_latest_model() is second.artifact
