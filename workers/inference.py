"""Running a loaded artifact on validated rows: one model call per batch.

Artifacts are sklearn estimators or Pipelines taking a DataFrame, or the seed guide's
dict {'model', 'preprocessor', 'scaler'}. Confidence is the top predict_proba where the
model has one; regressors report None (see README, "confidence").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from modelstore.errors import InvalidInput


def predict_frame(artifact: Any, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions and confidences (or None) for every row of `frame`, in one call."""
    model, x = _prepare(artifact, frame)
    predictions = np.asarray(model.predict(x))
    confidence = None
    if hasattr(model, "predict_proba"):
        confidence = np.asarray(model.predict_proba(x)).max(axis=1)
    return predictions, confidence


def _prepare(artifact: Any, frame: pd.DataFrame) -> tuple[Any, Any]:
    if isinstance(artifact, dict):
        model = artifact.get("model")
        if model is None:
            raise InvalidInput("artifact: seed-style dict has no 'model' entry")
        x: Any = frame
        if artifact.get("preprocessor") is not None:
            x = artifact["preprocessor"].transform(x)
        if artifact.get("scaler") is not None:
            x = artifact["scaler"].transform(x)
        return model, x
    return artifact, frame


def as_float(value: Any) -> float:
    """A prediction as a finite float; NaN/inf or a non-numeric label is an error."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"prediction: model returned a non-numeric value {value!r:.40}") from None
    if not math.isfinite(number):
        raise InvalidInput(f"prediction: model returned a non-finite value {number}")
    return number


def per_row(artifact: Any, frame: pd.DataFrame, positions: Sequence[int]
            ) -> dict[int, tuple[float, float | None] | str]:
    """Predict row by row: isolates the rows that break a whole-batch call."""
    out: dict[int, tuple[float, float | None] | str] = {}
    for pos in positions:
        try:
            preds, conf = predict_frame(artifact, frame.iloc[[pos]])
            out[pos] = (as_float(preds[0]), None if conf is None else float(conf[0]))
        except Exception as exc:  # noqa: BLE001 - one row's failure is that row's error
            out[pos] = f"prediction failed: {type(exc).__name__}: {str(exc)[:200]}"
    return out
