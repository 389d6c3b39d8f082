"""Model version strings."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, and_, select

from modelstore.schema import model_artifacts as A

VERSION_FORMAT = "%Y%m%d_%H%M%S"


def new_version(now: datetime | None = None) -> str:
    """YYYYMMDD_HHMMSS in UTC; the store suffixes _2, _3… when a second is already taken."""
    return (now or datetime.now(UTC)).strftime(VERSION_FORMAT)


def free_version(conn: Connection, model_name: str) -> str:
    """YYYYMMDD_HHMMSS, with _2, _3… when that second is taken for this model name."""
    base = new_version()
    taken = set(conn.execute(select(A.c.model_version).where(and_(
        A.c.model_name == model_name, A.c.model_version.like(f"{base}%")))).scalars())
    if base not in taken:
        return base
    n = 2
    while f"{base}_{n}" in taken:
        n += 1
    return f"{base}_{n}"
