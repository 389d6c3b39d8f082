"""Monitoring queries in Core, so they run on Postgres and SQLite alike."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Date, cast, func, select

from modelstore import schema

P = schema.model_predictions
A = schema.model_artifacts


def version_stats(conn: Connection, model_name: str | None, since: datetime | None
                  ) -> list[dict[str, Any]]:
    err = P.c.predicted_value - P.c.actual_value
    labelled = func.count(P.c.actual_value)
    stmt = (select(P.c.model_name, P.c.model_version,
                   func.count().label("predictions"), labelled.label("labelled"),
                   func.avg(func.abs(err)).label("mae"), func.avg(err * err).label("mse"),
                   func.min(P.c.prediction_time).label("first_prediction"),
                   func.max(P.c.prediction_time).label("last_prediction"))
            .group_by(P.c.model_name, P.c.model_version)
            .order_by(func.max(P.c.prediction_time).desc()))
    if model_name is not None:
        stmt = stmt.where(P.c.model_name == model_name)
    if since is not None:
        stmt = stmt.where(P.c.prediction_time >= since)
    out = []
    for row in conn.execute(stmt).mappings():
        item = dict(row)
        mse = item.pop("mse")
        # SQLite may lack sqrt(); take it here for both dialects.
        item["rmse"] = math.sqrt(mse) if mse is not None else None
        item["coverage"] = item["labelled"] / item["predictions"] if item["predictions"] else 0.0
        out.append(item)
    return out


def daily_counts(conn: Connection, days: int) -> list[dict[str, Any]]:
    # SQLite's CAST(... AS DATE) yields the number 2026; its date() yields 'YYYY-MM-DD'.
    day = (cast(P.c.prediction_time, Date) if conn.dialect.name == "postgresql"
           else func.date(P.c.prediction_time, type_=Date)).label("day")
    since = datetime.now() - timedelta(days=days)
    stmt = (select(day, P.c.model_name, P.c.model_version, func.count().label("predictions"),
                   func.avg(P.c.predicted_value).label("avg_prediction"))
            .where(P.c.prediction_time >= since)
            .group_by(day, P.c.model_name, P.c.model_version).order_by(day))
    return [dict(r) for r in conn.execute(stmt).mappings()]


def model_sizes(conn: Connection) -> list[dict[str, Any]]:
    stmt = (select(A.c.model_type, func.count().label("count"),
                   func.sum(A.c.model_size_bytes).label("total_bytes"),
                   func.avg(A.c.model_size_bytes).label("avg_bytes"))
            .group_by(A.c.model_type).order_by(A.c.model_type))
    return [dict(r) for r in conn.execute(stmt).mappings()]
