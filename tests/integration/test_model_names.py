"""Model names in a serving process (issue 12, item 2): a typo is an error, never the
default model's file; the filesystem fallback is per name and only for an unreachable
database; an unknown name costs no loader and no query per request, and no connect
timeout during a partition. In-process ServingState on real Postgres and Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelstore import defaults
from modelstore.settings import Settings
from tests.support import models
from tests.support.silent import silent_listener
from workers.state import ServingState


def dump(offset: float = 0.0) -> bytes:
    return models.serialize(models.small_model(offset))


@pytest.fixture
def serving(tmp_path: Path, redis_url: str) -> Iterator[Any]:
    states: list[ServingState] = []

    def make(database_url: str, connect_timeout_s: int = 5) -> ServingState:
        state = ServingState(Settings(
            database_url=database_url, broker_url=redis_url, result_backend=redis_url,
            model_dir=tmp_path / "models", spool_dir=tmp_path / "spool", metrics_port=0,
            connect_timeout_s=connect_timeout_s, artifact_cache_dir=tmp_path / "cache"))
        states.append(state)
        return state

    (tmp_path / "models").mkdir()
    yield make
    for state in states:
        state.close()


def count_loaders(state: ServingState, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    real = state._new_loader

    def counted(name: str) -> Any:
        made.append(name)
        return real(name)

    monkeypatch.setattr(state, "_new_loader", counted)
    return made


def test_a_typo_is_unknown_even_with_a_model_file_and_is_not_cached_as_a_slot(
        pg_url: str, tmp_path: Path, serving: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    models.register(pg_url, "v1")
    (tmp_path / "models" / "model.pkl").write_bytes(dump(offset=models.V2_OFFSET))
    state = serving(pg_url)
    made = count_loaders(state, monkeypatch)
    row = models.rows(1)[0]
    first = state.predict_one(row, "t-1", "typo", None, 30)
    assert first == {"request_id": "t-1", "error": "unknown model 'typo'"}
    assert "typo" not in state._slots
    for i in range(20):  # negative cache: no loader (so no query) per request
        assert state.predict_one(row, f"t-{i + 2}", "typo", None, 30)["error"] == (
            "unknown model 'typo'")
    assert made == ["typo"]
    served = state.predict_one(row, "d-1", "default", None, 30)
    assert served["model_version"] == "v1"  # the database's model, not the file's
    # After the short TTL the name is looked up again (it may have been registered).
    state.unknown.ttl_s = 0.0
    state.unknown.forget()
    state.predict_one(row, "t-99", "typo", None, 30)
    assert made == ["typo", "default", "typo"]


def test_a_name_without_production_does_not_fall_back_to_a_file(
        pg_url: str, tmp_path: Path, serving: Any) -> None:
    models.register(pg_url, "v1")
    from modelstore.db import ModelEvaluationDB

    with ModelEvaluationDB(pg_url) as db:
        db.store_model("run-x", "x1", "RandomForest", dump(), model_name="other")
    for path in (tmp_path / "models" / "model.pkl",
                 tmp_path / "models" / "other" / "production" / "model.pkl"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(dump(offset=models.V2_OFFSET))
    state = serving(pg_url)
    result = state.predict_one(models.rows(1)[0], "o-1", "other", None, 30)
    assert result == {"request_id": "o-1", "error": "model 'other' has no production version"}


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts TCP connections and never answers: a partitioned database."""
    with silent_listener() as port:
        yield port


def test_during_a_partition_each_name_falls_back_to_its_own_file_and_a_typo_answers_at_once(
        silent_port: int, tmp_path: Path, serving: Any) -> None:
    root = tmp_path / "models"
    (root / "model.pkl").write_bytes(dump())
    (root / "cars" / "production").mkdir(parents=True)
    (root / "cars" / "production" / "model.pkl").write_bytes(dump(offset=models.V2_OFFSET))
    state = serving(f"postgresql://postgres@127.0.0.1:{silent_port}/x", connect_timeout_s=2)
    row = models.rows(1)[0]
    default = state.predict_one(row, "p-1", "default", None, 60)  # pays one connect timeout
    assert not models.is_v2(default["prediction"])
    assert state.slot("default").status().source == "filesystem"
    assert state.database_down()
    started = time.monotonic()
    cars = state.predict_one(row, "p-2", "cars", None, 60)
    typo = state.predict_one(row, "p-3", "typo", None, 60)
    elapsed = time.monotonic() - started
    assert models.is_v2(cars["prediction"])  # its own file, not the default one
    assert typo["error"] == ("model 'typo' is unavailable: the database is unreachable, and "
                             "there is no fallback file for it")
    # A connect attempt would cost >= 2 s (the timeout); the lookups never made one.
    assert elapsed < 1.5, f"lookups during the partition took {elapsed:.1f} s"


def test_the_negative_cache_is_bounded() -> None:
    from workers.names import UnknownNames

    names = UnknownNames(ttl_s=60, max_names=3)
    for i in range(5):
        names.remember(f"n{i}", "unknown")
    assert len(names) == 3 and names.get("n0") is None and names.get("n4") == "unknown"
    assert defaults.UNKNOWN_MODEL_TTL_S <= 10
