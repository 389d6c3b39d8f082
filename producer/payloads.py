"""Turning what callers hand the client into JSON task payloads: rows, request ids,
actuals and artifacts. Pure functions, no broker."""

from __future__ import annotations

import base64
import csv
import math
import numbers
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from modelstore import artifacts, formats
from modelstore.errors import ArtifactError, InvalidInput

Row = dict[str, Any]


def new_request_id() -> str:
    return str(uuid.uuid4())


def to_rows(rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> list[Row]:
    """A list of feature dicts from a list of mappings or a DataFrame (native JSON types)."""
    if isinstance(rows, pd.DataFrame):
        return [dict(r) for r in rows.to_dict(orient="records")]
    if isinstance(rows, Mapping | str | bytes) or not isinstance(rows, Sequence):
        raise InvalidInput(f"rows: expected a list of feature dicts or a DataFrame, "
                           f"got {type(rows).__name__}")
    out: list[Row] = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidInput(f"rows[{i}]: expected a dict of features, got {type(row).__name__}")
        out.append(dict(row))
    return out


def request_ids_for(count: int, given: Sequence[str | None] | None) -> list[str]:
    """The caller's request ids (a UUID where one is missing), one per row."""
    if given is None:
        return [new_request_id() for _ in range(count)]
    if len(given) != count:
        raise InvalidInput(f"request_ids: expected {count} ids (one per row), got {len(given)}")
    return [str(rid) if rid else new_request_id() for rid in given]


def chunks(count: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) slices of `count` items, `size` at a time."""
    if size <= 0:
        raise InvalidInput(f"chunk_size: must be positive, got {size}")
    for start in range(0, count, size):
        yield start, min(start + size, count)


def read_actuals_csv(path: Path) -> tuple[dict[str, float], dict[str, str]]:
    """Read `request_id,actual_value` rows; returns (good, invalid) like the worker reports."""
    good: dict[str, float] = {}
    invalid: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"request_id", "actual_value"} - set(reader.fieldnames or [])
        if missing:
            raise InvalidInput(f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                               "expected request_id,actual_value")
        for line, rec in enumerate(reader, start=2):
            rid = (rec.get("request_id") or "").strip()
            raw = (rec.get("actual_value") or "").strip()
            value = _finite(raw)
            if not rid:
                invalid[f"{path.name}:{line}"] = f"{path.name} line {line}: empty request_id"
            elif value is None:
                invalid[rid] = f"{path.name} line {line}: actual_value {raw!r} is not a number"
            else:
                good[rid] = value
    return good, invalid


def _finite(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ArtifactPayload:
    """How a model travels to `predq.store_model`: a path or base64 (never both)."""

    artifact_path: str | None
    artifact_b64: str | None
    feature_schema: dict[str, Any] | None
    size_bytes: int
    format: str = formats.FORMAT_JOBLIB


def artifact_format(artifact: object, fmt: str | None) -> str:
    """The upload's format: as given, else what a file's bytes are, else joblib."""
    if fmt is not None:
        return formats.check_format(fmt)
    if isinstance(artifact, str | Path):
        try:
            with Path(artifact).open("rb") as fh:
                head = fh.read(8)
        except OSError as exc:
            raise InvalidInput(f"artifact {artifact}: cannot read it: {exc.strerror}") from exc
        return formats.sniff(head) or formats.FORMAT_JOBLIB
    return formats.FORMAT_JOBLIB


def artifact_bytes(artifact: object, fmt: str = formats.FORMAT_JOBLIB,
                   sample: Any = None) -> tuple[bytes, dict[str, Any] | None]:
    """Serialized bytes and the feature schema of an artifact object or a file.

    Registration refuses what cannot serve: a file is loaded once here (it is the caller's
    own model, about to be served by the workers anyway) and must be a model with predict.
    An object converted to ONNX must predict like the original on `sample`.
    """
    if isinstance(artifact, str | Path):
        path = Path(artifact)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"artifact {path}: cannot read it: {exc.strerror}") from exc
        return data, describe_bytes(data, fmt, str(path))
    if not formats.has_predict(artifact):
        raise InvalidInput(f"artifact: a {type(artifact).__name__} is not a model (no predict "
                           "method; expected an estimator, a Pipeline or the seed's dict)")
    if fmt == formats.FORMAT_ONNX:
        from modelstore import onnxmodel

        if sample is None:
            raise InvalidInput("sample: format='onnx' needs a sample of input rows (the "
                               "DataFrame or array the model takes) to convert the model and "
                               "check that ONNX predicts like scikit-learn")
        data = onnxmodel.convert(artifact, sample)
        onnxmodel.check_parity(artifact, data, sample)
        return data, artifacts.describe_features(artifact)
    return artifacts.serialize(artifact, fmt), artifacts.describe_features(artifact)


def describe_bytes(data: bytes, fmt: str, label: str) -> dict[str, Any] | None:
    """Load the caller's own artifact once: one-line errors for a corrupt or wrong file."""
    formats.check_bytes_match(data, fmt, f"artifact {label}")
    try:
        obj = formats.loads(data, fmt, label)
    except ArtifactError as exc:
        raise InvalidInput(str(exc)) from exc
    except Exception as exc:  # re-raised as ours: corrupt pickle raises any type
        raise InvalidInput(f"artifact {label}: not a loadable {fmt} file (corrupt or "
                           f"truncated?): {type(exc).__name__}: {str(exc)[:120]}") from exc
    try:
        formats.check_servable(obj, None, label)
    except ArtifactError as exc:
        raise InvalidInput(str(exc)) from exc
    return artifacts.describe_features(obj)


def describe_file(path: Path, fmt: str | None = None) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"artifact {path}: cannot read it: {exc.strerror}") from exc
    return describe_bytes(data, artifact_format(path, fmt), str(path))


def encode_b64(data: bytes, cap: int) -> str | None:
    """Base64 of `data`, or None when it would exceed `cap` bytes."""
    if 4 * math.ceil(len(data) / 3) > cap:
        return None
    return base64.b64encode(data).decode("ascii")


def request_time() -> str:
    """Now, UTC, ISO 8601: stamped into every prediction message. It is the logged row's
    prediction_time and partition key, so a redelivery of the message lands on the same
    row (see the README's wire contract)."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat()


def predict_kwargs(features: Row, model: str, request_id: str, version: str | None
                    ) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"features": features, "model": model, "request_id": request_id,
                              "request_time": request_time()}
    if version is not None:
        kwargs["version"] = version
    return kwargs


def batch_kwargs(rows: list[Row], request_ids: list[str], model: str, version: str | None
                  ) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"rows": rows, "model": model, "request_ids": request_ids,
                              "request_time": request_time()}
    if version is not None:
        kwargs["version"] = version
    return kwargs


def columnar_kwargs(rows: list[Row], request_ids: list[str], model: str,
                    version: str | None) -> dict[str, Any]:
    """`predict_batch` kwargs in the columnar shape (`columns` + `data`: each name sent
    once, not once per row), or in the row shape when the rows do not all have the same
    features (a missing feature must stay "missing", not become null)."""
    kwargs = batch_kwargs(rows, request_ids, model, version)
    if not rows:
        return kwargs
    columns = list(rows[0])
    names = set(columns)
    if any(len(row) != len(columns) or row.keys() != names for row in rows):
        return kwargs
    del kwargs["rows"]
    kwargs["columns"] = columns
    kwargs["data"] = [[row[c] for c in columns] for row in rows]
    return kwargs


def check_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in (metrics or {}).items():
        if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not math.isfinite(value)):
            raise InvalidInput(f"metrics.{name}: expected a finite number, got {value!r:.60}")
        out[str(name)] = float(value)
    return out


def numeric_actuals(actuals: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    if not isinstance(actuals, Mapping):
        raise InvalidInput(f"actuals: expected a mapping request_id -> value or a CSV path, "
                           f"got {type(actuals).__name__}")
    good: dict[str, float] = {}
    invalid: dict[str, str] = {}
    for rid, value in actuals.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not math.isfinite(number):
            invalid[str(rid)] = f"actuals[{rid!r}]: expected a finite number, got {value!r:.60}"
        else:
            good[str(rid)] = number
    return good, invalid
