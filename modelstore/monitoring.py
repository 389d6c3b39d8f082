"""Monitoring queries in Core, so they run on Postgres and SQLite alike.

Prediction figures come from the rollups (modelstore/rollups.py): exact, and in time
proportional to versions x hours rather than to the log's rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from modelstore import rollups, schema
from modelstore.predictions import utc_now

A = schema.model_artifacts


def version_stats(conn: Connection, model_name: str | None, since: datetime | None
                  ) -> list[dict[str, Any]]:
    return rollups.version_stats(conn, model_name, since)


def daily_counts(conn: Connection, days: int) -> list[dict[str, Any]]:
    return rollups.daily_counts(conn, utc_now() - timedelta(days=days))


def model_sizes(conn: Connection) -> list[dict[str, Any]]:
    stmt = (select(A.c.model_type, func.count().label("count"),
                   func.sum(A.c.model_size_bytes).label("total_bytes"),
                   func.avg(A.c.model_size_bytes).label("avg_bytes"))
            .group_by(A.c.model_type).order_by(A.c.model_type))
    return [dict(r) for r in conn.execute(stmt).mappings()]
