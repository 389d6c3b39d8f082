"""One query against a test database through a throwaway engine (disposed after)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, text


def fetch(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()
