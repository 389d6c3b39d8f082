"""One batch through one model object: validate, predict once, build results and log rows.

Every result and logged row carries the version and sha256 of the model object that
computed it (invariant 1), taken from the same snapshot used to predict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from modelstore.errors import InvalidInput
from modelstore.loader import LoadedModel
from modelstore.predictions import PredictionRow
from workers import inference
from workers.fastpath import Predictor, Rows, compile_predictor
from workers.validation import FeatureSpec, Limits, check_request_id, to_frame, validate_rows


@dataclass(frozen=True)
class ServingModel:
    """A loaded model as one serving process holds it."""

    loaded: LoadedModel
    spec: FeatureSpec | None
    generation: int | None
    predictor: Predictor
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def version(self) -> str:
        return self.loaded.model_version

    @property
    def sha256(self) -> str:
        return self.loaded.sha256

    @classmethod
    def wrap(cls, loaded: LoadedModel, generation: int | None) -> ServingModel:
        artifact = loaded.artifact

        spec = FeatureSpec.from_schema(loaded.feature_schema)

        def slow(rows: Rows) -> tuple[np.ndarray, np.ndarray | None]:
            return inference.predict_frame(artifact, to_frame(rows, spec))  # type: ignore[arg-type]

        from_rows = getattr(artifact, "predict_rows", None)
        if callable(from_rows):  # ONNX (modelstore.onnxmodel): feeds built from the rows
            return cls(loaded, spec, generation, from_rows)
        return cls(loaded, spec, generation, compile_predictor(artifact, slow))


@dataclass
class Outcome:
    results: list[dict[str, Any]]
    rows: list[PredictionRow]
    row_index: list[int] = field(default_factory=list)
    """For each logged row, the position of its result."""


def persist(outcome: Outcome, write: Callable[[Sequence[PredictionRow]], object]) -> None:
    """Log the batch in one write; if the store refuses a row, only that row fails.

    A refusal (InvalidInput) is the row's fault, so the rows are retried one by one and
    each refused one turns its result into an error; the others are logged.
    """
    try:
        write(outcome.rows)
        return
    except InvalidInput:
        pass
    for row, pos in zip(outcome.rows, outcome.row_index, strict=True):
        try:
            write([row])
        except InvalidInput as exc:
            outcome.results[pos] = {"request_id": row["request_id"],
                                    "error": f"not logged: {exc}"}


def request_id_errors(request_ids: Sequence[object], single_rows: bool) -> dict[int, str]:
    """Malformed ids; in a real batch also repeated ids (one row would serve two items)."""
    errors: dict[int, str] = {}
    seen: dict[object, int] = {}
    for i, rid in enumerate(request_ids):
        problem = check_request_id(rid, "request_id" if single_rows else f"request_ids[{i}]")
        if problem:
            errors[i] = problem
        elif not single_rows and rid in seen:
            errors[i] = f"request_ids[{i}]: duplicate of request_ids[{seen[rid]}] ({rid!r:.60})"
        else:
            seen[rid] = i
    return errors


def request_time_error(value: object) -> str | None:
    """None when `value` is absent or an ISO 8601 timestamp, else the error message."""
    if value is None or isinstance(value, datetime):
        return None
    if isinstance(value, str) and len(value) <= 40:
        try:
            datetime.fromisoformat(value)
            return None
        except ValueError:
            pass
    return f"request_time: expected an ISO 8601 timestamp (UTC), got {value!r:.60}"


def _log_time(value: object, first_seen: datetime) -> tuple[datetime, bool]:
    """The row's prediction_time and whether it is loose (chosen here, not by the client):
    the client's request_time as naive UTC, else this task's first-seen time."""
    if value is None:
        return first_seen, True
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when), False


def execute(model: ServingModel, features: Sequence[object], request_ids: Sequence[str],
            limits: Limits, *, single_rows: bool = False,
            request_times: Sequence[object] | None = None,
            shape_errors: dict[int, str] | None = None) -> Outcome:
    """Results in input order: {request_id, prediction, confidence} or {request_id, error}.

    `request_times` (one per item; None for a raw client that sent none) become the
    logged rows' prediction_time, the log's partition and dedup key (partitions.py).

    With `single_rows` the items are independent one-row requests (the micro-batcher):
    errors are not prefixed with a batch position and repeated request_ids are allowed
    (a redelivered message; the log keeps one row).

    `shape_errors` are items refused before validation (their place holds a stand-in).
    """
    ok_idx, clean, errors = validate_rows(features, model.spec, limits)
    if shape_errors:
        errors.update(shape_errors)
    if single_rows:
        errors = {i: _strip_position(i, m) for i, m in errors.items()}
        errors.update(request_id_errors(request_ids, True))
    else:
        errors.update(request_id_errors(request_ids, False))
    times = request_times or [None] * len(features)
    for i, when in enumerate(times):
        problem = request_time_error(when)
        if problem and i not in errors:
            errors[i] = problem
    first_seen = datetime.now(UTC).replace(tzinfo=None)
    keep = [(i, row) for i, row in zip(ok_idx, clean, strict=True) if i not in errors]
    values = _predict(model, [row for _, row in keep])
    results: list[dict[str, Any]] = [{} for _ in features]
    rows: list[PredictionRow] = []
    row_index: list[int] = []
    for i, message in errors.items():
        results[i] = {"request_id": _rid(request_ids[i]), "error": message}
    for pos, (i, row) in enumerate(keep):
        value = values[pos]
        if isinstance(value, str):
            where = "" if single_rows else f"rows[{i}]."
            results[i] = {"request_id": request_ids[i], "error": where + value}
            continue
        prediction, confidence = value
        results[i] = {"request_id": request_ids[i], "prediction": prediction,
                      "confidence": confidence}
        row_index.append(i)
        when, loose = _log_time(times[i], first_seen)
        rows.append({"request_id": request_ids[i], "model_name": model.loaded.model_name,
                     "model_version": model.version, "model_sha256": model.sha256,
                     "input_features": row, "predicted_value": prediction,
                     "confidence_score": confidence, "prediction_time": when,
                     "loose_time": loose})
    return Outcome(results, rows, row_index)


def _strip_position(i: int, message: str) -> str:
    prefix = f"rows[{i}]."
    return message[len(prefix):] if message.startswith(prefix) else message


def _rid(value: object) -> str | None:
    return value if isinstance(value, str) and len(value) <= 200 else None


def _predict(model: ServingModel, clean: list[dict[str, object]]
             ) -> list[tuple[float, float | None] | str]:
    if not clean:
        return []
    try:
        preds, conf = model.predictor(clean)
        return [(inference.as_float(p), None if conf is None else float(conf[k]))
                for k, p in enumerate(preds)]
    except Exception:  # noqa: BLE001 - isolate the offending rows below
        frame = to_frame(clean, model.spec)
        by_pos = inference.per_row(model.loaded.artifact, frame, range(len(clean)))
        return [by_pos[k] for k in range(len(clean))]
