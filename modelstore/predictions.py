"""The bulk prediction log: COPY (or multi-row VALUES) with request_id dedup, and backfill.

Functions here take an open SQLAlchemy Connection inside the caller's transaction.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict, TypeGuard

import orjson
from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.dialects import sqlite

from modelstore import schema
from modelstore.defaults import COPY_THRESHOLD_ROWS, DEFAULT_MODEL_NAME, MAX_REQUEST_ID_CHARS
from modelstore.errors import InvalidInput


class _RowRequired(TypedDict):
    request_id: str
    model_version: str
    input_features: Mapping[str, Any]
    predicted_value: float


class PredictionRow(_RowRequired, total=False):
    """One logged prediction. `prediction_time` defaults to the insert's transaction time."""

    model_name: str
    model_sha256: str | None
    confidence_score: float | None
    actual_value: float | None
    prediction_time: datetime | str | None


@dataclass(frozen=True)
class BackfillResult:
    updated: int
    unknown: list[str] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)


_COLUMNS = ("request_id", "model_name", "model_version", "model_sha256", "input_features",
            "predicted_value", "confidence_score", "actual_value", "prediction_time")
_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS predq_prediction_stage (
    request_id VARCHAR(128), model_name VARCHAR(100), model_version VARCHAR(50),
    model_sha256 VARCHAR(64), input_features JSONB, predicted_value FLOAT8,
    confidence_score FLOAT8, actual_value FLOAT8, prediction_time TIMESTAMP
) ON COMMIT DELETE ROWS
"""
_STAGE_INSERT = f"""
INSERT INTO model_predictions ({", ".join(_COLUMNS)})
SELECT request_id, model_name, model_version, model_sha256, input_features, predicted_value,
       confidence_score, actual_value, COALESCE(prediction_time, CURRENT_TIMESTAMP)
FROM predq_prediction_stage
ON CONFLICT (request_id) DO NOTHING
"""
_VALUES_INSERT = f"""
INSERT INTO model_predictions ({", ".join(_COLUMNS)}) VALUES %s
ON CONFLICT (request_id) DO NOTHING
"""
# A \u0000 escape preceded by an even number of backslashes (an odd one escapes the "\").
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_VALUES_TEMPLATE = "(%s, %s, %s, %s, %s::jsonb, %s, %s, %s, COALESCE(%s, CURRENT_TIMESTAMP))"


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


_PLAIN = (str, int, bool, type(None))


def _flat_json(features: Mapping[Any, Any]) -> str | None:
    """orjson for the common flat row of finite numbers and strings (10x json.dumps, which
    was 18% of a 1,000-row batch task); None sends anything else to json.dumps. orjson
    writes NaN as null, hence the explicit finiteness check."""
    for key, value in features.items():
        if type(key) is not str:
            return None
        if type(value) is float:
            if not math.isfinite(value):
                return None
        elif type(value) not in _PLAIN:
            return None
    try:
        return orjson.dumps(features).decode()
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits: json.dumps takes it
        return None


def _features_json(features: Any, index: int) -> str:
    """JSON text for the JSONB column; a str is taken as JSON already (the caller's contract)."""
    if isinstance(features, str):
        text = features
    elif isinstance(features, Mapping):
        try:
            text = _flat_json(features) or json.dumps(features, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"rows[{index}].input_features: not storable as JSON "
                               f"({exc})") from None
    else:
        raise InvalidInput(f"rows[{index}].input_features: expected a mapping of feature "
                           f"names to values, got {type(features).__name__}")
    if "\\u0000" in text and _JSON_NUL.search(text):  # JSONB cannot hold NUL characters
        raise InvalidInput(f"rows[{index}].input_features: contains a NUL character")
    return text


def _tuple(row: Mapping[str, Any], index: int) -> tuple[Any, ...]:
    return (
        row["request_id"],
        row.get("model_name") or DEFAULT_MODEL_NAME,
        row["model_version"],
        row.get("model_sha256"),
        _features_json(row["input_features"], index),
        float(row["predicted_value"]),
        _float_or_none(row.get("confidence_score")),
        _float_or_none(row.get("actual_value")),
        row.get("prediction_time"),
    )


def _is_finite_number(value: object) -> TypeGuard[numbers.Real]:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def check_row(row: Mapping[str, Any], index: int) -> None:
    """Reject what the database would store as garbage; the message names the field."""
    rid = row.get("request_id")
    if not isinstance(rid, str) or not rid or len(rid) > MAX_REQUEST_ID_CHARS:
        raise InvalidInput(f"rows[{index}].request_id: expected a non-empty string of at most "
                           f"{MAX_REQUEST_ID_CHARS} characters, got {rid!r:.60}")
    for name in ("predicted_value", "confidence_score", "actual_value"):
        value = row.get(name)
        if value is None and name != "predicted_value":
            continue
        if not _is_finite_number(value):
            raise InvalidInput(f"rows[{index}].{name}: expected a finite number, got {value!r:.60}")
    for name, limit in (("model_version", 50), ("model_name", 100)):
        value = row.get(name)
        if value is None and name == "model_name":
            continue
        if not isinstance(value, str) or not value or len(value) > limit:
            raise InvalidInput(f"rows[{index}].{name}: expected a non-empty string of at most "
                               f"{limit} characters, got {value!r:.60}")
    if "input_features" not in row:
        raise InvalidInput(f"rows[{index}].input_features: required")


def write_predictions(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert rows, skipping request_ids already logged; returns how many were new."""
    if not rows:
        return 0
    for i, row in enumerate(rows):
        check_row(row, i)
    tuples = [_tuple(r, i) for i, r in enumerate(rows)]
    if conn.dialect.name == "postgresql":
        if len(tuples) >= COPY_THRESHOLD_ROWS:
            return _direct_copy(conn, tuples) or _copy_insert(conn, tuples)
        return _values_insert(conn, tuples)
    return _sqlite_insert(conn, tuples)


def _direct_copy(conn: Connection, tuples: list[tuple[Any, ...]]) -> int:
    """COPY straight into the log: the common case, where no request_id is logged yet.

    Runs in a savepoint; on a unique violation (a redelivered or replayed row) it rolls
    back and returns 0, and the caller takes the staged ON CONFLICT path. Rows with an
    explicit prediction_time (spool replays) always take the staged path.
    """
    if any(t[-1] is not None for t in tuples):
        return 0
    from psycopg2 import errors as pg_errors

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(t[:-1] for t in tuples)
    buffer.seek(0)
    with _raw_cursor(conn) as cur:
        cur.execute("SAVEPOINT predq_direct_copy")
        try:
            cur.copy_expert(f"COPY model_predictions ({', '.join(_COLUMNS[:-1])}) "
                            "FROM STDIN WITH (FORMAT csv)", buffer)
        except pg_errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT predq_direct_copy")
            return 0
        cur.execute("RELEASE SAVEPOINT predq_direct_copy")
    return len(tuples)


def _raw_cursor(conn: Connection) -> Any:
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def _copy_insert(conn: Connection, tuples: list[tuple[Any, ...]]) -> int:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(tuples)
    buffer.seek(0)
    info = conn.connection.info
    with _raw_cursor(conn) as cur:
        if not info.get("predq_stage"):
            cur.execute(_STAGE_DDL)
            info["predq_stage"] = True
        cur.copy_expert(
            f"COPY predq_prediction_stage ({', '.join(_COLUMNS)}) FROM STDIN WITH (FORMAT csv)",
            buffer)
        cur.execute(_STAGE_INSERT)
        inserted = int(cur.rowcount)
        # Emptied here, not only at commit: two calls in one transaction must not mix.
        cur.execute("DELETE FROM predq_prediction_stage")
    return inserted


def _values_insert(conn: Connection, tuples: list[tuple[Any, ...]]) -> int:
    from psycopg2.extras import execute_values

    with _raw_cursor(conn) as cur:
        execute_values(cur, _VALUES_INSERT, tuples, template=_VALUES_TEMPLATE,
                       page_size=len(tuples))
        return int(cur.rowcount)


def _sqlite_insert(conn: Connection, tuples: list[tuple[Any, ...]]) -> int:
    stmt = sqlite.insert(schema.model_predictions).on_conflict_do_nothing(
        index_elements=["request_id"])
    before = conn.execute(select(schema.model_predictions.c.id).order_by(
        schema.model_predictions.c.id.desc()).limit(1)).scalar() or 0
    params = []
    for t in tuples:
        p = dict(zip(_COLUMNS, t, strict=True))
        p["input_features"] = json.loads(p["input_features"])
        if p["prediction_time"] is None:
            del p["prediction_time"]
        elif isinstance(p["prediction_time"], str):
            p["prediction_time"] = datetime.fromisoformat(p["prediction_time"])
        params.append(p)
    # Rows with and without an explicit time need separate statements (different columns).
    for group in (
        [p for p in params if "prediction_time" in p],
        [p for p in params if "prediction_time" not in p],
    ):
        if group:
            conn.execute(stmt, group)
    return _count_after(conn, before)


def _count_after(conn: Connection, before: int) -> int:
    from sqlalchemy import func

    return int(conn.execute(select(func.count()).where(
        schema.model_predictions.c.id > before)).scalar() or 0)


def normalize_actuals(actuals: Mapping[str, Any] | Iterable[Any]) -> tuple[
        dict[str, float], dict[str, str]]:
    """Accept a mapping, (request_id, value) pairs or {request_id, actual_value} dicts."""
    items: Iterable[Any] = actuals.items() if isinstance(actuals, Mapping) else actuals
    good: dict[str, float] = {}
    bad: dict[str, str] = {}
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            rid, value = item.get("request_id"), item.get("actual_value")
        elif isinstance(item, list | tuple) and len(item) == 2:
            rid, value = item
        else:
            bad[f"#{i}"] = f"actuals[{i}]: expected {{request_id, actual_value}}, got {item!r:.60}"
            continue
        if not isinstance(rid, str) or not rid or len(rid) > MAX_REQUEST_ID_CHARS:
            bad[f"#{i}"] = f"actuals[{i}].request_id: expected a non-empty string, got {rid!r:.60}"
        elif not _is_finite_number(value):
            bad[rid] = f"actuals[{i}].actual_value: expected a finite number, got {value!r:.60}"
        else:
            good[rid] = float(value)
    return good, bad


def backfill(conn: Connection, actuals: Mapping[str, float]) -> tuple[int, list[str]]:
    """Set actual_value by request_id; returns (updated, unknown request_ids)."""
    if not actuals:
        return 0, []
    if conn.dialect.name == "postgresql":
        found = _pg_backfill(conn, actuals)
    else:
        found = _generic_backfill(conn, actuals)
    unknown = [rid for rid in actuals if rid not in found]
    return len(found), unknown


def _pg_backfill(conn: Connection, actuals: Mapping[str, float]) -> set[str]:
    from psycopg2.extras import execute_values

    sql = ("UPDATE model_predictions AS p SET actual_value = v.actual, "
           "actual_time = CURRENT_TIMESTAMP FROM (VALUES %s) AS v(request_id, actual) "
           "WHERE p.request_id = v.request_id RETURNING p.request_id")
    with _raw_cursor(conn) as cur:
        rows = execute_values(cur, sql, list(actuals.items()), template="(%s, %s::float8)",
                              page_size=5000, fetch=True)
    return {r[0] for r in rows}


def _generic_backfill(conn: Connection, actuals: Mapping[str, float]) -> set[str]:
    from sqlalchemy import func

    t = schema.model_predictions
    stmt = update(t).where(t.c.request_id == bindparam("rid")).values(
        actual_value=bindparam("actual"), actual_time=func.current_timestamp())
    conn.execute(stmt, [{"rid": k, "actual": v} for k, v in actuals.items()])
    found: set[str] = set()
    keys = list(actuals)
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        found.update(conn.execute(select(t.c.request_id).where(t.c.request_id.in_(chunk))).scalars())
    return found
