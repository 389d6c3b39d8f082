"""Fast inference for the common artifact shapes, proven equal to sklearn on first use.

Per-call overhead dominates micro-batches: for a 100-tree RandomForest pipeline, sklearn's
`predict` on 4 rows costs ~10-20 ms, almost none of it arithmetic (DataFrame handling,
input re-validation, joblib dispatch per tree). predq's rows are already validated, so:
- every sklearn call runs under `config_context(assume_finite=True,
  skip_parameter_validation=True)`;
- a ColumnTransformer of StandardScaler / OneHotEncoder(handle_unknown="ignore") /
  passthrough on named columns is applied straight from its fitted parameters, from the
  row dicts, without building a DataFrame;
- a forest of regression trees is the mean of `tree_.predict` over its estimators, which
  is what `RandomForestRegressor.predict` computes.
The first batch is predicted both ways; if they differ the fast path is dropped for that
model (logged) and sklearn's predict is used from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import sklearn
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

log = logging.getLogger(__name__)

Rows = Sequence[Mapping[str, Any]]
Predictor = Callable[[Rows], tuple[np.ndarray, np.ndarray | None]]
Transform = Callable[[Rows], np.ndarray]
_FORESTS = (RandomForestRegressor, ExtraTreesRegressor)


def fast_config() -> Any:
    return sklearn.config_context(assume_finite=True, skip_parameter_validation=True)


def compile_predictor(artifact: Any, slow: Predictor) -> Predictor:
    """A predictor for `artifact`, checked against `slow` on its first call."""
    fast = _fast_for(artifact)
    configured = _configured(slow)
    return configured if fast is None else _checked(fast, configured)


def _fast_for(artifact: Any) -> Predictor | None:
    if isinstance(artifact, dict):
        steps = [artifact.get("preprocessor"), artifact.get("scaler"), artifact.get("model")]
    elif isinstance(artifact, Pipeline):
        steps = [step for _, step in artifact.steps]
    else:
        return None
    *head, forest = [s for s in steps if s is not None and s != "passthrough"]
    if not isinstance(forest, _FORESTS) or int(getattr(forest, "n_outputs_", 1)) != 1:
        return None
    if not head or not isinstance(head[0], ColumnTransformer):
        return None
    flat = FlatForest(forest)
    first = _column_transform(head[0])
    later = [_array_transform(s) for s in head[1:]]
    if first is None or any(t is None for t in later):
        return None
    rest = [t for t in later if t is not None]

    def run(rows: Rows) -> tuple[np.ndarray, np.ndarray | None]:
        x = first(rows)
        for step in rest:
            x = step(x)
        return flat.predict(x), None
    return run


class FlatForest:
    """All trees of a regression forest as flat arrays, walked for every tree at once.

    For a micro-batch, 100 `tree_.predict` calls cost ~0.3 ms of Python overhead; the
    level-by-level walk below costs ~0.04 ms for one row. Leaves point to themselves,
    so walking max_depth levels lands every tree on its leaf. Comparisons are float32
    inputs against float64 thresholds, exactly as sklearn's tree code does.
    """

    SMALL_BATCH = 256
    """Above this many rows the per-tree loop is as fast and needs no index matrices."""

    def __init__(self, forest: Any) -> None:
        trees = [e.tree_ for e in forest.estimators_]
        offsets = np.concatenate([[0], np.cumsum([t.node_count for t in trees])[:-1]])
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("f", "t", "l", "r", "v")}
        for tree, offset in zip(trees, offsets, strict=True):
            leaf = tree.children_left == -1
            own = np.arange(tree.node_count) + offset
            parts["f"].append(np.where(leaf, 0, tree.feature))
            parts["t"].append(np.where(leaf, np.inf, tree.threshold))
            parts["l"].append(np.where(leaf, own, tree.children_left + offset))
            parts["r"].append(np.where(leaf, own, tree.children_right + offset))
            parts["v"].append(tree.value.reshape(tree.node_count, -1)[:, 0])
        self.feature = np.concatenate(parts["f"]).astype(np.intp)
        self.threshold = np.concatenate(parts["t"]).astype(np.float64)
        self.left = np.concatenate(parts["l"]).astype(np.intp)
        self.right = np.concatenate(parts["r"]).astype(np.intp)
        self.value = np.concatenate(parts["v"]).astype(np.float64)
        self.roots = offsets.astype(np.intp)
        self.depth = max(t.max_depth for t in trees)
        self.estimators = forest.estimators_

    def predict(self, x: np.ndarray) -> np.ndarray:
        x32 = np.ascontiguousarray(x.toarray() if hasattr(x, "toarray") else x,
                                   dtype=np.float32)
        if x32.shape[0] > self.SMALL_BATCH:
            return self._per_tree(x32)
        values = x32.astype(np.float64)
        node = np.repeat(self.roots[None, :], x32.shape[0], axis=0)
        rows = np.arange(x32.shape[0])[:, None]
        for _ in range(self.depth):
            go_left = values[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        return self.value[node].mean(axis=1)

    def _per_tree(self, x32: np.ndarray) -> np.ndarray:
        total = np.zeros(x32.shape[0], dtype=np.float64)
        for estimator in self.estimators:
            total += estimator.tree_.predict(x32).reshape(x32.shape[0], -1)[:, 0]
        return total / len(self.estimators)


def _column_transform(ct: ColumnTransformer) -> Transform | None:
    parts: list[Transform] = []
    for _name, transformer, columns in ct.transformers_:
        if isinstance(transformer, str) and transformer == "drop":
            continue
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            return None
        part = _part(transformer, tuple(columns))
        if part is None:
            return None
        parts.append(part)
    if not parts:
        return None
    return lambda rows: np.hstack([p(rows) for p in parts]) if len(parts) > 1 else parts[0](rows)


def _part(transformer: Any, columns: tuple[str, ...]) -> Transform | None:
    if (isinstance(transformer, str) and transformer == "passthrough") or (
            isinstance(transformer, FunctionTransformer) and transformer.func is None):
        # A fitted "passthrough" is an identity FunctionTransformer in recent sklearn.
        return _numeric(columns, None, None)
    if isinstance(transformer, StandardScaler):
        return _numeric(columns, transformer.mean_ if transformer.with_mean else None,
                        transformer.scale_ if transformer.with_std else None)
    if isinstance(transformer, OneHotEncoder) and _plain_onehot(transformer):
        return _onehot(columns, transformer.categories_)
    return None


def _plain_onehot(encoder: OneHotEncoder) -> bool:
    return (encoder.handle_unknown == "ignore" and encoder.drop_idx_ is None
            and not getattr(encoder, "_infrequent_enabled", False))


def _numeric(columns: tuple[str, ...], mean: Any, scale: Any) -> Transform:
    def run(rows: Rows) -> np.ndarray:
        x = np.array([[row[c] for c in columns] for row in rows], dtype=np.float64)
        if mean is not None:
            x -= mean
        if scale is not None:
            x /= scale
        return x
    return run


def _onehot(columns: tuple[str, ...], categories: list[np.ndarray]) -> Transform:
    offsets: list[dict[Any, int]] = []
    width = 0
    for cats in categories:
        offsets.append({value: width + k for k, value in enumerate(cats.tolist())})
        width += len(cats)
    pairs = tuple(zip(columns, offsets, strict=True))

    def run(rows: Rows) -> np.ndarray:
        out = np.zeros((len(rows), width), dtype=np.float64)
        hit_rows: list[int] = []
        hit_cols: list[int] = []
        for i, row in enumerate(rows):
            for column, index in pairs:
                k = index.get(row[column])
                if k is not None:  # handle_unknown="ignore": an unseen category is all zeros
                    hit_rows.append(i)
                    hit_cols.append(k)
        out[hit_rows, hit_cols] = 1.0  # one scatter: an element store costs ~0.1 us each
        return out
    return run


def _array_transform(step: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    if isinstance(step, StandardScaler):
        mean = step.mean_ if step.with_mean else None
        scale = step.scale_ if step.with_std else None

        def run(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)
            if mean is not None:
                x = x - mean
            return x / scale if scale is not None else x
        return run
    return None


def _configured(slow: Predictor) -> Predictor:
    def run(rows: Rows) -> tuple[np.ndarray, np.ndarray | None]:
        with fast_config():
            return slow(rows)
    return run


def _checked(fast: Predictor, reference: Predictor) -> Predictor:
    return _Checked(fast, reference)


class _Checked:
    """Runs `reference` and `fast` on the first call and keeps whichever agrees. A class,
    not a closure that sets an attribute on itself: that closure was a reference cycle,
    which kept every replaced model alive until a full garbage collection."""

    def __init__(self, fast: Predictor, reference: Predictor) -> None:
        self._fast = fast
        self._reference = reference
        self._chosen: Predictor | None = None
        self.fast_path: bool | None = None  # for tests and logs

    def __call__(self, rows: Rows) -> tuple[np.ndarray, np.ndarray | None]:
        chosen = self._chosen
        if chosen is not None:
            return chosen(rows)
        expected = self._reference(rows)
        try:
            same = bool(np.allclose(self._fast(rows)[0], expected[0], rtol=1e-9, atol=1e-6))
        except Exception:
            log.exception("fast inference path failed; using sklearn's predict")
            same = False
        self._chosen = self._fast if same else self._reference
        self.fast_path = same
        if not same:
            log.warning("fast inference path disagrees with sklearn's predict; using sklearn")
        return expected
