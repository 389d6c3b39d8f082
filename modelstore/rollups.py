"""Reads of the prediction log's figures from `model_prediction_rollups`, and their rebuild.

The rollups hold, per (model_name, model_version, role, hour of prediction_time): counts,
labelled counts, the sums of predictions, absolute and squared errors, and the first and
last time. Triggers keep them in step with every write (logddl.py), and partitions
dropped by retention leave them in place, so a read here equals a full scan over every
row ever logged (counts exactly; sums up to float rounding, as any sum in another
order) in time proportional to versions x hours, not rows.

A `since` that is not on the hour reads the rows of its first, partial hour from the log
itself (one hour of rows, found through the time index) and the rest from the rollups.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from modelstore import schema

P = schema.model_predictions
R = schema.model_prediction_rollups
_SUMS = ("predictions", "labelled", "sum_predicted", "sum_abs_error", "sum_sq_error")


def ceil_hour(when: datetime) -> datetime:
    floor = when.replace(minute=0, second=0, microsecond=0)
    return floor if floor == when else floor + timedelta(hours=1)


def _hour(conn: Connection, column: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return func.date_trunc("hour", column)
    return func.strftime("%Y-%m-%d %H:00:00.000000", column)


def _raw_aggregates(conn: Connection) -> list[Any]:
    err = P.c.predicted_value - P.c.actual_value
    return [func.count().label("predictions"), func.count(P.c.actual_value).label("labelled"),
            func.coalesce(func.sum(P.c.predicted_value), 0.0).label("sum_predicted"),
            func.coalesce(func.sum(func.abs(err)), 0.0).label("sum_abs_error"),
            func.coalesce(func.sum(err * err), 0.0).label("sum_sq_error"),
            func.min(P.c.prediction_time).label("first_time"),
            func.max(P.c.prediction_time).label("last_time")]


def _rollup_aggregates() -> list[Any]:
    return [*(func.sum(R.c[name]).label(name) for name in _SUMS),
            func.min(R.c.first_time).label("first_time"),
            func.max(R.c.last_time).label("last_time")]


def hourly(conn: Connection, model_name: str | None, since: datetime | None
           ) -> list[dict[str, Any]]:
    """Figures per (model_name, model_version, hour) from `since`: the rollups, plus the
    log's own rows for a partial first hour."""
    out = _by_keys(conn, [R.c.model_name, R.c.model_version, R.c.hour], model_name, since)
    if since is not None and ceil_hour(since) != since:
        hour = _hour(conn, P.c.prediction_time).label("hour")
        stmt = (select(P.c.model_name, P.c.model_version, hour, *_raw_aggregates(conn))
                .where(P.c.prediction_time >= since, P.c.prediction_time < ceil_hour(since))
                .group_by(P.c.model_name, P.c.model_version, hour))
        if model_name is not None:
            stmt = stmt.where(P.c.model_name == model_name)
        out += [_clean(r) for r in conn.execute(stmt).mappings()]
    return out


def _by_keys(conn: Connection, keys: list[Any], model_name: str | None,
             since: datetime | None) -> list[dict[str, Any]]:
    stmt = select(*keys, *_rollup_aggregates()).group_by(*keys).having(
        func.sum(R.c.predictions) > 0)
    if model_name is not None:
        stmt = stmt.where(R.c.model_name == model_name)
    if since is not None:
        stmt = stmt.where(R.c.hour >= ceil_hour(since))
    return [_clean(r) for r in conn.execute(stmt).mappings()]


def _clean(row: Any) -> dict[str, Any]:
    item = dict(row)
    for name in ("predictions", "labelled"):
        item[name] = int(item[name] or 0)
    for name in ("sum_predicted", "sum_abs_error", "sum_sq_error"):
        item[name] = float(item[name] or 0.0)
    for name in ("hour", "first_time", "last_time"):
        if isinstance(item.get(name), str):  # SQLite's text timestamps
            item[name] = datetime.fromisoformat(item[name])
    return item


def _merge(rows: Iterable[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        have = merged.get(key)
        if have is None:
            merged[key] = {k: row[k] for k in (*keys, *_SUMS, "first_time", "last_time")}
            continue
        for name in _SUMS:
            have[name] += row[name]
        have["first_time"] = min(t for t in (have["first_time"], row["first_time"]) if t) \
            if have["first_time"] or row["first_time"] else None
        have["last_time"] = max(t for t in (have["last_time"], row["last_time"]) if t) \
            if have["last_time"] or row["last_time"] else None
    return list(merged.values())


def version_stats(conn: Connection, model_name: str | None, since: datetime | None
                  ) -> list[dict[str, Any]]:
    """Per version: predictions, labelled, coverage, MAE, RMSE, first and last time."""
    keys = ("model_name", "model_version")
    if since is None or ceil_hour(since) == since:
        rows = _by_keys(conn, [R.c.model_name, R.c.model_version], model_name, since)
    else:
        rows = _merge(hourly(conn, model_name, since), keys)
    out = []
    for row in sorted(rows, key=lambda r: r["last_time"] or datetime.min, reverse=True):
        labelled, n = row["labelled"], row["predictions"]
        out.append({
            "model_name": row["model_name"], "model_version": row["model_version"],
            "predictions": n, "labelled": labelled,
            "mae": row["sum_abs_error"] / labelled if labelled else None,
            "rmse": math.sqrt(max(row["sum_sq_error"], 0.0) / labelled) if labelled else None,
            "coverage": labelled / n if n else 0.0,
            "first_prediction": row["first_time"], "last_prediction": row["last_time"]})
    return out


def daily_counts(conn: Connection, since: datetime) -> list[dict[str, Any]]:
    """Predictions and mean prediction per (day, model_name, model_version) from `since`."""
    rows = hourly(conn, None, since)
    for row in rows:
        row["day"] = row["hour"].date()
    merged = _merge(rows, ("day", "model_name", "model_version"))
    return [{"day": r["day"], "model_name": r["model_name"],
             "model_version": r["model_version"], "predictions": r["predictions"],
             "avg_prediction": r["sum_predicted"] / r["predictions"]}
            for r in sorted(merged, key=lambda r: (r["day"], r["model_name"],
                                                   r["model_version"]))]


def refresh(engine: Engine) -> int:
    """Rebuild the rollups of every hour whose rows are still in the log, from the rows;
    hours of dropped partitions keep theirs. Returns the rollup rows written.

    For writes the triggers cannot see (straight into a partition, TRUNCATE, triggers
    disabled). Holds a SHARE lock on the log meanwhile: writers wait, readers do not.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("LOCK TABLE model_predictions IN SHARE MODE")
        return rebuild(conn)


def rebuild(conn: Connection) -> int:
    """refresh() in the caller's transaction (which holds the log still)."""
    pruned = conn.execute(select(schema.log_state.c.pruned_before)
                          .where(schema.log_state.c.id == 1)).scalar()
    pruned = datetime.fromisoformat(pruned) if isinstance(pruned, str) else pruned
    cleared = R.delete()
    if pruned is not None:
        cleared = cleared.where(R.c.hour >= pruned)
    conn.execute(cleared)
    hour = _hour(conn, P.c.prediction_time)
    source = select(P.c.model_name, P.c.model_version, P.c.role, hour,
                    *_raw_aggregates(conn)).group_by(
        P.c.model_name, P.c.model_version, P.c.role, hour)
    if pruned is not None:
        source = source.where(P.c.prediction_time >= pruned)
    columns = ["model_name", "model_version", "role", "hour", *_SUMS,
               "first_time", "last_time"]
    return int(conn.execute(R.insert().from_select(columns, source)).rowcount or 0)
