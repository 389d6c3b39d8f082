"""`predq report`: live error, label coverage, volume and promotions, as HTML (and PNG).

The data come from the store with SQLAlchemy Core (Postgres and SQLite alike): predictions
grouped per model, version and time bucket (count, labelled rows, MAE, RMSE), and the
promotion history. Rendering lives in `producer.report_html` (a self-contained page,
inline SVG, no network) and `producer.report_png` (matplotlib).

Times are the store's naive timestamps, taken as UTC; "now" is the database's clock, so
the window matches the timestamps the database wrote.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    and_,
    cast,
    extract,
    func,
    literal_column,
    select,
)
from sqlalchemy.sql.elements import ColumnElement

from modelstore import rollups, schema
from modelstore.db import ModelEvaluationDB
from modelstore.engine import translate_errors

R = schema.model_prediction_rollups
P = schema.model_predictions
H = schema.promotion_history

BUCKET_CHOICES_S = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400, 7 * 86_400)
MAX_BUCKETS = 60
HISTORY_LIMIT = 500


@dataclass(frozen=True)
class BucketStat:
    """Predictions of one model version in one time bucket."""

    start: datetime
    model: str
    version: str
    predictions: int
    labelled: int
    mae: float | None
    rmse: float | None

    @property
    def coverage(self) -> float:
        return self.labelled / self.predictions if self.predictions else 0.0


@dataclass(frozen=True)
class Event:
    """One promotion-history row."""

    at: datetime
    model: str
    from_version: str | None
    to_version: str
    action: str
    generation: int
    by: str | None
    reason: str | None


@dataclass
class ReportData:
    model: str | None
    since: datetime
    until: datetime
    bucket_s: int
    buckets: list[BucketStat]
    events: list[Event]
    """History rows in the window, oldest first, plus the last one before it."""
    versions: list[dict[str, Any]] = field(default_factory=list)
    """prediction_stats() rows over the window: totals per version."""

    @property
    def multi_model(self) -> bool:
        names = {b.model for b in self.buckets} | {e.model for e in self.events}
        return len(names) > 1

    def key(self, model: str, version: str) -> str:
        """A series name: the version, prefixed with the model when several are shown."""
        return f"{model}:{version}" if self.multi_model else version

    def series(self) -> list[str]:
        """Series keys, in order of first appearance (data, then promotions)."""
        keys: dict[str, None] = {}
        for b in sorted(self.buckets, key=lambda b: b.start):
            keys.setdefault(self.key(b.model, b.version))
        for e in self.events:
            if e.from_version:
                keys.setdefault(self.key(e.model, e.from_version))
            keys.setdefault(self.key(e.model, e.to_version))
        return list(keys)

    def x_range(self) -> tuple[datetime, datetime]:
        """From the first bucket or in-window promotion to the end of the last bucket."""
        starts = [b.start for b in self.buckets] + [e.at for e in self.events
                                                   if e.at >= self.since]
        ends = [b.start + timedelta(seconds=self.bucket_s) for b in self.buckets]
        ends += [e.at for e in self.events]
        if not starts:
            return self.since, self.until
        lo, hi = min(starts), max(ends)
        return (lo, hi) if hi > lo else (lo, lo + timedelta(seconds=self.bucket_s))


def pick_bucket(span: timedelta) -> int:
    """The smallest bucket that splits `span` into at most MAX_BUCKETS buckets."""
    seconds = max(span.total_seconds(), 1.0)
    for size in BUCKET_CHOICES_S:
        if seconds / size <= MAX_BUCKETS:
            return size
    return BUCKET_CHOICES_S[-1]


def _naive(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp, got {value!r:.40}")
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def db_now(conn: Connection) -> datetime:
    """The database's current time, in the form it stores timestamps (naive)."""
    if conn.dialect.name == "postgresql":
        return _naive(conn.execute(select(func.localtimestamp())).scalar_one())
    return _naive(conn.execute(select(func.current_timestamp())).scalar_one())


def _bucket_expr(conn: Connection, bucket_s: int) -> ColumnElement[Any]:
    """Start of a prediction's bucket, in epoch seconds: epoch - epoch % bucket_s."""
    # An int we chose, inlined: a bind parameter would make SELECT and GROUP BY differ.
    size: ColumnElement[Any] = literal_column(str(int(bucket_s)))
    epoch: ColumnElement[Any]
    if conn.dialect.name == "postgresql":
        epoch = extract("epoch", P.c.prediction_time)
    else:
        epoch = cast(func.strftime(literal_column("'%s'"), P.c.prediction_time), Integer)
    return epoch - epoch % size


def _where(since: datetime, model: str | None) -> ColumnElement[bool]:
    conds = [P.c.prediction_time >= since]
    if model is not None:
        conds.append(P.c.model_name == model)
    return and_(*conds)


def bucket_stats(conn: Connection, since: datetime, bucket_s: int, model: str | None
                 ) -> list[BucketStat]:
    """Buckets of whole hours come from the rollups (versions x hours, not rows); shorter
    ones, picked only for a span under a day, scan that span's rows."""
    if bucket_s % 3600 == 0:
        return _rollup_buckets(conn, since, bucket_s, model)
    bucket = _bucket_expr(conn, bucket_s).label("bucket")
    err = P.c.predicted_value - P.c.actual_value
    stmt = (select(bucket, P.c.model_name, P.c.model_version, func.count().label("n"),
                   func.count(P.c.actual_value).label("labelled"),
                   func.sum(func.abs(err)).label("abs_err"), func.sum(err * err).label("sq_err"))
            .where(_where(since, model))
            .group_by(bucket, P.c.model_name, P.c.model_version)
            .order_by(bucket))
    out = []
    for row in conn.execute(stmt).mappings():
        labelled = int(row["labelled"])
        mae = float(row["abs_err"]) / labelled if labelled else None
        rmse = math.sqrt(float(row["sq_err"]) / labelled) if labelled else None
        start = datetime.fromtimestamp(int(row["bucket"]), UTC).replace(tzinfo=None)
        out.append(BucketStat(start, row["model_name"], row["model_version"], int(row["n"]),
                              labelled, mae, rmse))
    return out


def _rollup_buckets(conn: Connection, since: datetime, bucket_s: int, model: str | None
                    ) -> list[BucketStat]:
    sums: dict[tuple[int, str, str], list[float]] = {}
    for row in rollups.hourly(conn, model, since):
        epoch = int(row["hour"].replace(tzinfo=UTC).timestamp())
        key = (epoch - epoch % bucket_s, row["model_name"], row["model_version"])
        acc = sums.setdefault(key, [0, 0, 0.0, 0.0])
        for i, name in enumerate(("predictions", "labelled", "sum_abs_error", "sum_sq_error")):
            acc[i] += row[name]
    out = []
    for (start, name, version), (n, labelled, abs_err, sq_err) in sorted(sums.items()):
        out.append(BucketStat(
            datetime.fromtimestamp(start, UTC).replace(tzinfo=None), name, version, int(n),
            int(labelled), abs_err / labelled if labelled else None,
            math.sqrt(max(sq_err, 0.0) / labelled) if labelled else None))
    return out


def _event(row: Any) -> Event:
    return Event(_naive(row["promoted_at"]), row["model_name"], row["from_version"],
                 row["to_version"], row["action"], int(row["generation"]), row["promoted_by"],
                 row["reason"])


def promotion_events(conn: Connection, since: datetime, model: str | None) -> list[Event]:
    """History rows since `since` (oldest first), preceded by the last one before it."""
    scope = [] if model is None else [H.c.model_name == model]
    inside = conn.execute(select(H).where(and_(H.c.promoted_at >= since, *scope))
                          .order_by(H.c.id.desc()).limit(HISTORY_LIMIT)).mappings().all()
    before = conn.execute(select(H).where(and_(H.c.promoted_at < since, *scope))
                          .order_by(H.c.id.desc()).limit(1)).mappings().all()
    return [_event(r) for r in reversed([*inside, *before])]


def _first_last(conn: Connection, since: datetime, model: str | None) -> tuple[Any, Any]:
    """The span of the window's predictions, from the rollups (the partial first hour
    counts whole: this only picks the bucket size)."""
    stmt = select(func.min(R.c.first_time), func.max(R.c.last_time)).where(
        R.c.hour >= since.replace(minute=0, second=0, microsecond=0), R.c.predictions > 0)
    if model is not None:
        stmt = stmt.where(R.c.model_name == model)
    first, last = conn.execute(stmt).one()
    return max(_naive(first), since) if first is not None else None, last


def load_report(db: ModelEvaluationDB, days: int = 7, model: str | None = None) -> ReportData:
    """Everything the report shows, for the last `days` days (of the database's clock)."""
    with translate_errors("reading report data", model_name=model, days=days), \
            db.engine.connect() as conn:
        until = db_now(conn)
        since = until - timedelta(days=days)
        first, last = _first_last(conn, since, model)
        span = (_naive(last) - _naive(first)) if first is not None else timedelta(0)
        bucket_s = pick_bucket(span)
        buckets = bucket_stats(conn, since, bucket_s, model)
        events = promotion_events(conn, since, model)
    versions = db.prediction_stats(model, since)
    return ReportData(model, since, until, bucket_s, buckets, events, versions)


def write_report(db: ModelEvaluationDB, output: Path, png: Path | None = None, *,
                 days: int = 7, model: str | None = None) -> ReportData:
    """Write the HTML page (and the PNG); returns the data shown."""
    from producer import report_html

    data = load_report(db, days, model)
    output.write_text(report_html.render(data), encoding="utf-8")
    if png is not None:
        from producer import report_png

        report_png.render(data, png)
    return data


def summary(data: ReportData, paths: Iterable[Path]) -> str:
    """One line for the CLI: what was written and what it covers."""
    rows = sum(b.predictions for b in data.buckets)
    labelled = sum(b.labelled for b in data.buckets)
    where = ", ".join(str(p) for p in paths)
    return (f"wrote {where}: {rows} predictions ({labelled} labelled) over "
            f"{len(data.series())} version(s), {len(data.events)} promotion event(s), "
            f"{data.bucket_s // 60}-minute buckets")
