"""ONNX artifacts (the optional extra `predq[onnx]`): serving through onnxruntime, and the
client-side conversion of a scikit-learn model with a parity check.

An OnnxModel looks like an estimator to the workers: `predict(frame)`, `predict_proba` for
classifiers, `feature_names_in_`. Inputs are one tensor per column (a DataFrame-fed
Pipeline) or one float tensor "X" (a model fitted on arrays).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from modelstore.errors import ArtifactError, ArtifactFormatError

PARITY_RTOL = 1e-4
"""ONNX computes in float32: predictions must agree within this fraction of the largest
absolute scikit-learn prediction in the sample (and classifier labels exactly)."""
_ARRAY_INPUT = "X"


def _runtime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ArtifactError("ONNX artifacts need onnxruntime: pip install 'predq[onnx]' on "
                            "every worker") from exc
    return onnxruntime


class OnnxModel:
    """An onnxruntime session with the estimator methods predq calls."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.inputs = [(i.name, i.type) for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]
        self.is_classifier = len(self.outputs) >= 2
        if [name for name, _ in self.inputs] != [_ARRAY_INPUT]:
            self.feature_names_in_ = np.array([name for name, _ in self.inputs], dtype=object)

    @classmethod
    def from_bytes(cls, data: bytes, label: str) -> OnnxModel:
        ort = _runtime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # re-raised as ours: onnxruntime raises its own unrelated types
            raise ArtifactFormatError(f"artifact {label}: onnxruntime cannot open it: "
                                      f"{str(exc)[:200]}") from exc
        return cls(session)

    def feature_schema(self) -> dict[str, Any] | None:
        if not hasattr(self, "feature_names_in_"):
            return None
        columns = [{"name": name, "dtype": "string" if "string" in kind else "number"}
                   for name, kind in self.inputs]
        return {"columns": columns, "source": "onnx inputs"}

    def _feeds(self, x: Any) -> dict[str, np.ndarray]:
        if not hasattr(self, "feature_names_in_"):
            return {_ARRAY_INPUT: np.asarray(x, dtype=np.float32)}
        frame = x if isinstance(x, pd.DataFrame) else pd.DataFrame(x)
        feeds: dict[str, np.ndarray] = {}
        for name, kind in self.inputs:
            column = frame[name].to_numpy()
            dtype: Any = object if "string" in kind else np.float32
            feeds[name] = column.astype(dtype).reshape(-1, 1)
        return feeds

    def _run(self, x: Any) -> list[Any]:
        return list(self.session.run(None, self._feeds(x)))

    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(self._run(x)[0]).reshape(-1)

    def __getattr__(self, name: str) -> Any:
        # predict_proba exists only on classifiers, so hasattr() tells regressors apart.
        if name == "predict_proba" and self.__dict__.get("is_classifier"):
            return self._predict_proba
        raise AttributeError(name)

    def _predict_proba(self, x: Any) -> np.ndarray:
        return np.asarray(self._run(x)[1], dtype=np.float64)


def convert(model: Any, sample: pd.DataFrame | np.ndarray) -> bytes:
    """ONNX bytes of a fitted scikit-learn model; `sample` gives the input columns' types."""
    try:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    except ImportError as exc:
        raise ArtifactError("format='onnx' needs skl2onnx: pip install 'predq[onnx]'") from exc
    if isinstance(sample, pd.DataFrame) and hasattr(model, "feature_names_in_"):
        types = [(str(c), StringTensorType([None, 1]) if sample[c].dtype == object
                  else FloatTensorType([None, 1])) for c in sample.columns]
    else:
        width = np.asarray(sample).shape[1]
        types = [(_ARRAY_INPUT, FloatTensorType([None, width]))]
    options = {"zipmap": False} if hasattr(model, "predict_proba") else None
    try:
        onx = to_onnx(model, initial_types=types, target_opset=17,
                      options={id(model): options} if options else None)
    except Exception as exc:  # re-raised as ours: skl2onnx raises many types for unsupported models
        raise ArtifactError(f"format='onnx': cannot convert {type(model).__name__}: "
                            f"{str(exc)[:200]}") from exc
    return bytes(onx.SerializeToString())


def check_parity(model: Any, data: bytes, sample: pd.DataFrame | np.ndarray) -> float:
    """The largest prediction difference ONNX vs scikit-learn on `sample`; ArtifactError
    when it exceeds PARITY_RTOL (see its docstring) or classifier labels differ."""
    onnx_model = OnnxModel.from_bytes(data, "converted model")
    expected = np.asarray(model.predict(sample))
    got = onnx_model.predict(sample)
    if onnx_model.is_classifier or expected.dtype.kind not in "fc":
        if not np.array_equal(expected.astype(str), got.astype(str)):
            raise ArtifactError("format='onnx': converted classifier labels differ from "
                                "scikit-learn's on the sample; refusing the upload")
        return 0.0
    scale = max(1.0, float(np.max(np.abs(expected))))
    worst = float(np.max(np.abs(expected.astype(np.float64) - got.astype(np.float64))))
    if worst > PARITY_RTOL * scale:
        raise ArtifactError(f"format='onnx': ONNX and scikit-learn predictions differ by "
                            f"{worst:.6g} (tolerance {PARITY_RTOL} x {scale:.6g}) on the sample; "
                            "refusing the upload")
    return worst
