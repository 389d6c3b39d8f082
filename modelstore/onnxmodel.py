"""ONNX artifacts (the optional extra `predq[onnx]`): serving through onnxruntime, and the
client-side conversion of a scikit-learn model with a parity check.

An OnnxModel looks like an estimator to the workers: `predict(frame)`, `predict_proba` for
classifiers, `feature_names_in_`. Inputs are one tensor per column (a DataFrame-fed
Pipeline) or one float tensor "X" (a model fitted on arrays).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from modelstore.errors import ArtifactError, ArtifactFormatError

PARITY_RTOL = 1e-4
"""ONNX computes in float32: a row agrees when its prediction is within this fraction of the
largest absolute scikit-learn prediction in the sample (a classifier's label: exactly)."""
PARITY_MAX_OFF_SHARE = 0.01
"""Share of sample rows allowed to disagree: float32 rounding (e.g. of a StandardScaler's
output) can send a row lying on a split threshold down the other branch of a tree."""
_ARRAY_INPUT = "X"
_COLUMNS_KEY = "predq_columns"
_INPUT_DTYPES: dict[str, Any] = {"tensor(string)": object, "tensor(double)": np.float64,
                                 "tensor(float)": np.float32}


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
        meta = session.get_modelmeta().custom_metadata_map
        # One array input: the column order convert() recorded, when the model had names.
        self.columns: list[str] | None = json.loads(meta.get(_COLUMNS_KEY, "null"))
        if [name for name, _ in self.inputs] != [_ARRAY_INPUT]:
            self.feature_names_in_ = np.array([name for name, _ in self.inputs], dtype=object)
        elif self.columns:
            self.feature_names_in_ = np.array(self.columns, dtype=object)

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
        if self.columns:
            return {"columns": [{"name": c, "dtype": "number"} for c in self.columns],
                    "source": "onnx metadata"}
        columns = [{"name": name, "dtype": "string" if "string" in kind else "number"}
                   for name, kind in self.inputs]
        return {"columns": columns, "source": "onnx inputs"}

    def _feeds(self, x: Any) -> dict[str, np.ndarray]:
        if self.columns and isinstance(x, pd.DataFrame):
            x = x[self.columns]
        if [name for name, _ in self.inputs] == [_ARRAY_INPUT]:
            kind = self.inputs[0][1]
            return {_ARRAY_INPUT: np.asarray(x, dtype=_INPUT_DTYPES.get(kind, np.float32))}
        frame = x if isinstance(x, pd.DataFrame) else pd.DataFrame(x)
        feeds: dict[str, np.ndarray] = {}
        for name, kind in self.inputs:
            column = frame[name].to_numpy()
            dtype: Any = _INPUT_DTYPES.get(kind, np.float32)
            feeds[name] = column.astype(dtype).reshape(-1, 1)
        return feeds

    def _run(self, x: Any) -> list[Any]:
        return list(self.session.run(None, self._feeds(x)))

    def predict_rows(self, rows: Sequence[Mapping[str, Any]]
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and confidences (top probability, or None) straight from validated
        feature dicts: no DataFrame, which would cost more than the ONNX run itself."""
        if [name for name, _ in self.inputs] == [_ARRAY_INPUT]:
            names = self.columns or [str(k) for k in rows[0]]
            kind = self.inputs[0][1]
            feeds = {_ARRAY_INPUT: np.array([[r[n] for n in names] for r in rows],
                                            dtype=_INPUT_DTYPES.get(kind, np.float32))}
        else:
            feeds = {name: np.array([r[name] for r in rows],
                                    dtype=_INPUT_DTYPES.get(kind, np.float32)).reshape(-1, 1)
                     for name, kind in self.inputs}
        outputs = self.session.run(None, feeds)
        predictions = np.asarray(outputs[0]).reshape(-1)
        if not self.is_classifier:
            return predictions, None
        return predictions, np.asarray(outputs[1], dtype=np.float64).max(axis=1)

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
        from skl2onnx.common.data_types import DoubleTensorType, StringTensorType
    except ImportError as exc:
        raise ArtifactError("format='onnx' needs skl2onnx: pip install 'predq[onnx]'") from exc
    columns: list[str] | None = None
    if isinstance(sample, pd.DataFrame) and _takes_columns(model):
        types = [(str(c), DoubleTensorType([None, 1])
                  if pd.api.types.is_numeric_dtype(sample[c]) else StringTensorType([None, 1]))
                 for c in sample.columns]
    else:
        if isinstance(sample, pd.DataFrame) and hasattr(model, "feature_names_in_"):
            columns = [str(c) for c in model.feature_names_in_]
        width = np.asarray(sample).shape[1]
        types = [(_ARRAY_INPUT, DoubleTensorType([None, width]))]
    options = {"zipmap": False} if hasattr(model, "predict_proba") else None
    try:
        onx = to_onnx(model, initial_types=types, target_opset=17,
                      options={id(model): options} if options else None)
    except Exception as exc:  # re-raised as ours: skl2onnx raises many types for unsupported models
        raise ArtifactError(f"format='onnx': cannot convert {type(model).__name__}: "
                            f"{str(exc)[:200]}") from exc
    _float32_trees(onx)
    if columns:
        entry = onx.metadata_props.add()
        entry.key, entry.value = _COLUMNS_KEY, json.dumps(columns)
    return bytes(onx.SerializeToString())


_TREE_OPS = {"TreeEnsembleRegressor": 0, "TreeEnsembleClassifier": 1}
"""ai.onnx.ml tree ops, and the output that must be float (their spec allows no double)."""


def _float32_trees(onx: Any) -> None:
    """Preprocess in double, cast to float32 right before each tree ensemble, and back.

    That is what scikit-learn does (trees compare float32 values with float32 thresholds,
    after preprocessing in float64); preprocessing in float32 instead would send rows near
    a threshold down the other branch.
    """
    from onnx import TensorProto, helper

    graph = onx.graph
    nodes = list(graph.node)
    declared = {o.name: o.type.tensor_type.elem_type for o in graph.output}
    out: list[Any] = []
    for node in nodes:
        position = _TREE_OPS.get(node.op_type)
        if position is None:
            out.append(node)
            continue
        source, target = node.input[0], node.output[position]
        out.append(helper.make_node("Cast", [source], [f"{source}_f32"],
                                    to=TensorProto.FLOAT, name=f"{node.name}_in_f32"))
        node.input[0] = f"{source}_f32"
        out.append(node)
        if declared.get(target) == TensorProto.FLOAT:
            continue  # already declared float (a classifier's probabilities)
        node.output[position] = f"{target}_f32"
        out.append(helper.make_node("Cast", [f"{target}_f32"], [target],
                                    to=TensorProto.DOUBLE, name=f"{node.name}_out_f64"))
    del graph.node[:]
    graph.node.extend(out)


def _takes_columns(model: Any) -> bool:
    """A ColumnTransformer (or a Pipeline starting with one) takes one input per column."""
    first = model.steps[0][1] if hasattr(model, "steps") else model
    return hasattr(first, "transformers")


def check_parity(model: Any, data: bytes, sample: pd.DataFrame | np.ndarray) -> float:
    """The share of `sample` rows on which ONNX and scikit-learn disagree (see PARITY_RTOL);
    ArtifactError when it exceeds PARITY_MAX_OFF_SHARE."""
    onnx_model = OnnxModel.from_bytes(data, "converted model")
    expected = np.asarray(model.predict(sample))
    got = onnx_model.predict(sample)
    if len(expected) == 0:
        raise ArtifactError("sample: format='onnx' needs at least one row to check parity")
    if onnx_model.is_classifier or expected.dtype.kind not in "fc":
        off = expected.astype(str) != got.astype(str)
        what = "labels differ"
    else:
        scale = max(1.0, float(np.max(np.abs(expected))))
        off = np.abs(expected.astype(np.float64) - got.astype(np.float64)) > PARITY_RTOL * scale
        what = f"predictions differ by more than {PARITY_RTOL} x {scale:.6g}"
    share = float(np.mean(off))
    if share > PARITY_MAX_OFF_SHARE:
        raise ArtifactError(f"format='onnx': on {int(off.sum())} of {len(off)} sample rows "
                            f"ONNX and scikit-learn {what} (allowed: "
                            f"{PARITY_MAX_OFF_SHARE:.0%}); refusing the upload")
    return share
