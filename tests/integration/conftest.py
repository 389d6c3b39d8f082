"""Fixtures for the model-store tests: small trained artifacts and a seed-style environment."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from producer.sample import make_cars, train_pipeline, train_seed_dict


def dump(artifact: object) -> bytes:
    """Serialize exactly as the seed guide's trainer does."""
    buffer = io.BytesIO()
    joblib.dump(artifact, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def cars() -> pd.DataFrame:
    return make_cars(300, seed=1)


@pytest.fixture(scope="session")
def pipeline_bytes(cars: pd.DataFrame) -> bytes:
    """A small fitted sklearn Pipeline taking the seed's six features."""
    return dump(train_pipeline(cars, n_estimators=3, max_depth=3))


@pytest.fixture(scope="session")
def pipeline_v2_bytes(cars: pd.DataFrame) -> bytes:
    """Same data, predictions shifted by 100,000: tells the two versions apart."""
    return dump(train_pipeline(cars, n_estimators=3, max_depth=3,
                               offset=100_000))


@pytest.fixture(scope="session")
def seed_dict_bytes(cars: pd.DataFrame) -> bytes:
    """The seed guide's artifact shape {'model', 'preprocessor', 'scaler'}."""
    return dump(train_seed_dict(cars, n_estimators=3, max_depth=3))


@pytest.fixture
def seed_env(store_url: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """DATABASE_URL and PREDQ_MODEL_DIR set as the seed guide's configuration section says,
    and the module functions' shared loader reset so it reads them."""
    import modelstore.loader

    monkeypatch.setenv("DATABASE_URL", store_url)
    monkeypatch.setattr(modelstore.loader, "_default", None)
    return store_url


@pytest.fixture
def raw_engine() -> Iterator[Callable[[str], Engine]]:
    """Plain SQLAlchemy engines (no predq code in the way) for the seed's raw SQL."""
    engines: list[Engine] = []

    def make(url: str) -> Engine:
        parsed = make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg2")
        engine = create_engine(parsed)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


_COLUMNS = """
SELECT table_name, column_name, data_type, character_maximum_length, is_nullable,
       column_default
FROM information_schema.columns WHERE table_schema = 'public'
ORDER BY table_name, column_name
"""
_INDEXES = """
SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
ORDER BY tablename, indexname
"""
_CONSTRAINTS = """
SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2
"""
_STORAGE = """
SELECT attrelid::regclass::text, attname, attstorage FROM pg_attribute
WHERE attrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace
                   AND relkind = 'r') AND attnum > 0 AND NOT attisdropped
ORDER BY 1, 2
"""


def _describe(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {name: [tuple(r) for r in conn.execute(text(sql))]
            for name, sql in (("columns", _COLUMNS), ("indexes", _INDEXES),
                              ("constraints", _CONSTRAINTS), ("storage", _STORAGE))}


@pytest.fixture
def describe_db() -> Callable[[Connection], dict[str, list[tuple[Any, ...]]]]:
    """A Postgres database's shape: columns, indexes, constraints, column storage."""
    return _describe


@pytest.fixture
def fresh_shape(pg_admin: object, raw_engine: Callable[[str], Engine]
                ) -> Callable[[], dict[str, list[tuple[Any, ...]]]]:
    """The shape (`describe_db`) of a Postgres database predq created itself, to compare a
    migrated database with."""
    from modelstore import ModelEvaluationDB
    from tests.conftest import create_database, drop_database

    def shape() -> dict[str, list[tuple[Any, ...]]]:
        fresh = create_database(pg_admin)
        try:
            ModelEvaluationDB(fresh)
            with raw_engine(fresh).connect() as conn:
                return _describe(conn)
        finally:
            drop_database(pg_admin, fresh)

    return shape
