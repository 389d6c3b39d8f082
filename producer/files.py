"""Reading feature tables and writing result tables for `predq predict --input`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from modelstore.errors import InvalidInput

RESULT_COLUMNS = ("request_id", "model_version", "model_sha256", "prediction", "confidence",
                  "error")


def _kind(path: Path, option: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise InvalidInput(f"{option} {path}: expected a .csv or .parquet file, got "
                           f"{suffix or 'no extension'!r}")
    return suffix


def read_table(path: Path) -> pd.DataFrame:
    """A DataFrame from a .csv or .parquet file. CSV cells stay text (empty ones NaN):
    each is converted on its own later, so one bad cell cannot turn its column to text."""
    if _kind(path, "--input") == ".csv":
        try:
            return pd.read_csv(path, dtype=str)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"--input {path}: not a readable CSV: {exc}") from exc
    return pd.read_parquet(_parquet_ready(path))


def write_table(frame: pd.DataFrame, path: Path) -> None:
    if _kind(path, "--output") == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(_parquet_ready(path), index=False)


def _parquet_ready(path: Path) -> Path:
    try:
        import pyarrow  # noqa: F401 - pandas needs it for parquet
    except ImportError:
        raise InvalidInput(f"{path}: parquet needs pyarrow (pip install pyarrow)") from None
    return path


def results_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """Results as a table with the standard columns, in input order."""
    frame = pd.DataFrame(results)
    for col in RESULT_COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    return frame[list(RESULT_COLUMNS)]
