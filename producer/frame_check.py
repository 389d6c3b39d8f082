"""A feature table (CSV, parquet or DataFrame) checked before anything is sent.

Header problems (missing or unexpected columns, a missing id column) fail up front in one
message. Each cell is converted to its column's type on its own, so one bad cell fails
only its row, never its whole column. Problems name the table's own row numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from modelstore.errors import InvalidInput

NUMBER = "number"
STRING = "string"
_ECHO_CHARS = 40
_CHUNK_ROW = re.compile(r"^rows\[\d+\]\.")

RowLabel = Callable[[int], str]
"""How a message names row `i` (0-based) of the table, e.g. "row 3 (line 4)"."""


def csv_row(i: int) -> str:
    """A CSV data row: 1-based, and its line in the file (the header is line 1)."""
    return f"row {i + 1} (line {i + 2})"


def table_row(i: int) -> str:
    return f"row {i + 1}"


@dataclass
class CheckedTable:
    """The rows to send (converted), where each sits in the table, and the refused ones."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)


def check_frame(frame: pd.DataFrame, schema: Mapping[str, Any] | None = None, *,
                where: str = "frame", expects: str = "the model",
                label: RowLabel = table_row, missing_id: str | None = None) -> CheckedTable:
    """A feature table checked before sending: the header against `schema` (a recorded
    feature schema, e.g. `client.db.feature_schema(model)[1]`), then every cell.

    Raises InvalidInput naming every header problem at once; returns the rows to send
    (e.g. to `PredqClient.predict_many`), their positions, and the refused rows.
    """
    types = schema_types(schema)
    check_header([str(c) for c in frame.columns], types, where=where, expects=expects,
                 missing_id=missing_id)
    return check_cells(frame, types or infer_types(frame), label)


def schema_types(schema: Mapping[str, Any] | None) -> dict[str, str] | None:
    """{column: "number" | "string"} from a recorded feature schema, or None."""
    columns = schema.get("columns") if isinstance(schema, Mapping) else None
    if not isinstance(columns, list):
        return None
    types = {str(c.get("name")): STRING if c.get("dtype") == STRING else NUMBER
             for c in columns if isinstance(c, Mapping) and c.get("name")}
    return types or None


def check_header(columns: Sequence[str], types: Mapping[str, str] | None, *,
                 where: str, expects: str, missing_id: str | None = None) -> None:
    """Raise InvalidInput naming every header problem at once: missing and unexpected
    feature columns (when the schema is known) and a missing --id-column."""
    problems: list[str] = []
    if missing_id is not None:
        problems.append(f"no column {missing_id!r} for --id-column")
    if types is not None:
        missing = [c for c in types if c not in columns]
        unknown = [c for c in columns if c not in types]
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            flags = " ".join(f"--exclude {c}" for c in unknown)
            problems.append(f"unexpected column(s) {', '.join(unknown)} (leave them out "
                            f"with {flags})")
        if missing or unknown:
            problems.append(f"{expects} expects {', '.join(types)}")
    if problems:
        raise InvalidInput(f"{where}: " + "; ".join(problems) + "; nothing was sent")


def infer_types(frame: pd.DataFrame) -> dict[str, str]:
    """Without a recorded schema: a column is numeric when most of its filled cells are
    numbers (so one stray word fails its row, not the column)."""
    types: dict[str, str] = {}
    for name in frame.columns:
        column = frame[name]
        filled = int(column.notna().sum())
        numbers = int(pd.to_numeric(column, errors="coerce").notna().sum())
        types[str(name)] = NUMBER if filled and numbers * 2 > filled else STRING
    return types


def check_cells(frame: pd.DataFrame, types: Mapping[str, str], label: RowLabel
                ) -> CheckedTable:
    """Convert each cell to its column's type; a row with a bad cell is refused with one
    message naming every bad cell, the others are kept in order."""
    converted: dict[str, list[Any]] = {}
    problems: dict[int, list[str]] = {}
    for name, kind in types.items():
        values, bad = _convert(frame[name], kind)
        converted[name] = values
        for i, message in bad.items():
            problems.setdefault(i, []).append(f"{name}: {message}")
    out = CheckedTable()
    names = list(types)
    for i in range(len(frame)):
        if i in problems:
            out.errors[i] = f"{label(i)}: " + "; ".join(problems[i])
            continue
        out.positions.append(i)
        out.rows.append({n: converted[n][i] for n in names})
    return out


def _convert(column: pd.Series, kind: str) -> tuple[list[Any], dict[int, str]]:
    raw = column.tolist()
    empty = column.isna().tolist()
    bad: dict[int, str] = {}
    if kind == STRING:
        values = [None if e else (v if isinstance(v, str) else _text(v))
                  for v, e in zip(raw, empty, strict=True)]
        bad = {i: "empty cell" for i, e in enumerate(empty) if e}
        return values, bad
    numbers = pd.to_numeric(column, errors="coerce").tolist()
    values = []
    for i, (value, number, is_empty) in enumerate(zip(raw, numbers, empty, strict=True)):
        if is_empty:
            bad[i] = "empty cell"
        elif isinstance(value, bool) or number is None or not math.isfinite(number):
            bad[i] = f"expected a number, got {_echo(value)}"
        values.append(number if i not in bad else None)
    return values, bad


def _text(value: object) -> str:
    # A text column that pandas read as numbers (parquet, DataFrames): 3.0 -> "3".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _echo(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _ECHO_CHARS else text[:_ECHO_CHARS - 1] + "…"


def renumber(error: str, position: int, label: RowLabel) -> str:
    """A worker's `rows[k].features.x: ...` (k counts within one chunk) as the table's row."""
    return _CHUNK_ROW.sub(f"{label(position)}: ", error, count=1)
