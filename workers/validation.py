"""Per-item input validation for prediction requests (invariant 5).

Every rejected item gets exactly one message naming the field and the problem, e.g.
`features.mileage: must be a finite number, got nan`; the other items of a batch go on.
The common all-valid row takes a fast path of plain type checks; only a row that fails it
is diagnosed in detail, so validating a 1,000-row batch costs well under a millisecond.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

from modelstore.defaults import MAX_REQUEST_ID_CHARS, MAX_STRING_FEATURE_CHARS
from modelstore.predictions import refused_text

NUMBER = "number"
STRING = "string"
_DTYPES = (NUMBER, STRING)
_ECHO_CHARS = 40
_LISTED_COLUMNS = 12
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]+")
_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_]+")
_MISSING = object()


@dataclass(frozen=True)
class Limits:
    """Bounds on one item; oversized values are rejected, never truncated."""

    max_string_chars: int = MAX_STRING_FEATURE_CHARS
    max_request_id_chars: int = MAX_REQUEST_ID_CHARS
    max_abs_number: float = 1e15

    def __post_init__(self) -> None:
        # The fast path relies on `-m <= v <= m` rejecting NaN and infinities.
        if not (math.isfinite(self.max_abs_number) and self.max_abs_number > 0):
            raise ValueError(f"Limits.max_abs_number: must be a finite positive number, "
                             f"got {self.max_abs_number!r}")
        for name in ("max_string_chars", "max_request_id_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name}: must be at least 1, got {getattr(self, name)}")


_DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class FeatureSpec:
    """The columns a model expects, parsed once per loaded model and reused for every row."""

    columns: tuple[str, ...]
    dtypes: tuple[str, ...]
    _checks: tuple[tuple[str, bool], ...] = field(init=False, repr=False, compare=False)
    _names: frozenset[str] = field(init=False, repr=False, compare=False)
    _expected: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.columns) != len(self.dtypes):
            raise ValueError(f"FeatureSpec: {len(self.columns)} columns but "
                             f"{len(self.dtypes)} dtypes")
        if not self.columns:
            raise ValueError("FeatureSpec.columns: must name at least one column")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"FeatureSpec.columns: duplicate names in {self.columns!r:.200}")
        for name, dtype in zip(self.columns, self.dtypes, strict=True):
            if dtype not in _DTYPES:
                raise ValueError(f"FeatureSpec.dtypes[{name!r}]: unknown dtype {dtype!r} "
                                 f"(expected 'number' or 'string')")
        checks = tuple((c, d == NUMBER) for c, d in zip(self.columns, self.dtypes, strict=True))
        object.__setattr__(self, "_checks", checks)
        object.__setattr__(self, "_names", frozenset(self.columns))
        object.__setattr__(self, "_expected", _list_columns(self.columns))

    @classmethod
    def from_schema(cls, schema: dict[str, Any] | None) -> FeatureSpec | None:
        """Parse `{"columns": [{"name", "dtype"}, ...]}`; None when the model exposes none."""
        if schema is None:
            return None
        columns = schema.get("columns") if isinstance(schema, Mapping) else None
        if not isinstance(columns, list):
            raise ValueError(f"feature schema: 'columns' must be a list, got {columns!r:.60}")
        names: list[str] = []
        dtypes: list[str] = []
        for i, column in enumerate(columns):
            name = column.get("name") if isinstance(column, Mapping) else None
            if not isinstance(name, str) or not name:
                raise ValueError(f"feature schema: columns[{i}].name must be a non-empty "
                                 f"string, got {name!r:.60}")
            names.append(name)
            dtypes.append(column.get("dtype"))
        return cls(tuple(names), tuple(dtypes))

    @property
    def expected(self) -> str:
        """The column list as error messages show it."""
        return self._expected


def _list_columns(columns: Sequence[str]) -> str:
    shown = ", ".join(c if _PLAIN_KEY_RE.fullmatch(c) else _echo_text(c)
                      for c in columns[:_LISTED_COLUMNS])
    if len(columns) > _LISTED_COLUMNS:
        shown += f", ... ({len(columns)} in all)"
    return shown


# --- request ids -------------------------------------------------------------------------


def check_request_id(value: object, field: str = "request_id", *,
                     limits: Limits = _DEFAULT_LIMITS) -> str | None:
    """None when `value` is a usable request id, else the error message."""
    if type(value) is not str:
        if value is None:
            return f"{field}: must not be null"
        return f"{field}: expected a string, got {_describe(value)}"
    if not value:
        return f"{field}: must not be empty"
    if len(value) > limits.max_request_id_chars:
        return (f"{field}: {len(value)} characters exceeds the limit of "
                f"{limits.max_request_id_chars}")
    if _REQUEST_ID_RE.fullmatch(value) is None:
        bad = next(c for c in value if _REQUEST_ID_RE.fullmatch(c) is None)
        return (f"{field}: character {bad!r} is not allowed "
                f"(use letters, digits and . _ : @ / + = -), got {_echo(value)}")
    return None


# --- one row -----------------------------------------------------------------------------


def validate_features(features: object, spec: FeatureSpec | None,
                      limits: Limits = _DEFAULT_LIMITS, field: str = "features"
                      ) -> tuple[dict[str, object] | None, str | None]:
    """(clean_row, None) or (None, the first problem found).

    Order: not an object, missing features (all of them named), unexpected features,
    then each column in schema order. The clean row may be `features` itself when
    nothing needed converting.
    """
    if spec is not None and _is_clean(features, spec._checks, limits):
        return features, None  # type: ignore[return-value]  # _is_clean proved it a dict
    return _diagnose(features, spec, limits, field)


def _is_clean(row: object, checks: tuple[tuple[str, bool], ...], limits: Limits) -> bool:
    """The fast path: a plain dict with exactly the expected keys and plain valid values."""
    if type(row) is not dict or len(row) != len(checks):
        return False
    top = limits.max_abs_number
    max_chars = limits.max_string_chars
    try:
        for name, is_number in checks:
            value = row[name]
            kind = type(value)
            if is_number:
                # Comparisons are False for NaN, reject infinities and work on huge ints.
                if not ((kind is float or kind is int) and -top <= value <= top):
                    return False
            elif kind is not str or len(value) > max_chars or refused_text(value):
                return False
    except KeyError:
        return False
    return True


def _diagnose(features: object, spec: FeatureSpec | None, limits: Limits, field: str
              ) -> tuple[dict[str, object] | None, str | None]:
    if not isinstance(features, Mapping):
        return None, (f"{field}: expected an object mapping feature names to values, "
                      f"got {_describe(features)}")
    if spec is None:
        return _diagnose_free(features, limits, field)
    missing = [name for name in spec.columns if name not in features]
    if len(missing) == 1:
        return None, f"{_path(field, missing[0])}: missing"
    if missing:
        # Every one, so a caller fixes the row once, not once per feature.
        names = ", ".join(m if _PLAIN_KEY_RE.fullmatch(m) else _echo_text(m) for m in missing)
        return None, f"{field}: missing {len(missing)} features: {names}"
    for key in features:
        if type(key) is not str or key not in spec._names:
            return None, (f"{_path(field, key)}: unexpected feature "
                          f"(expected one of {spec.expected})")
    clean: dict[str, object] = {}
    for name, is_number in spec._checks:
        value, error = _check_value(features[name], is_number, limits)
        if error is not None:
            return None, f"{_path(field, name)}: {error}"
        clean[name] = value
    return clean, None


def _diagnose_free(features: Mapping[Any, object], limits: Limits, field: str
                   ) -> tuple[dict[str, object] | None, str | None]:
    """No schema: a non-empty flat object of name -> finite number or string."""
    if not features:
        return None, f"{field}: must name at least one feature, got an empty object"
    clean: dict[str, object] = {}
    for key, raw in features.items():
        if (type(key) is not str or not key or len(key) > limits.max_string_chars
                or refused_text(key)):
            return None, (f"{_path(field, key)}: feature names must be non-empty strings "
                          "without NUL characters or lone surrogates")
        value, error = _check_value(raw, _looks_numeric(raw), limits, either=True)
        if error is not None:
            return None, f"{_path(field, key)}: {error}"
        clean[key] = value
    return clean, None


def _looks_numeric(value: object) -> bool:
    return not isinstance(value, str)


def _check_value(value: object, is_number: bool, limits: Limits, *, either: bool = False
                 ) -> tuple[object, str | None]:
    """(normalized value, None) or (None, problem). `either`: no schema, any scalar type."""
    if value is None:
        return None, "must not be null"
    if is_number:
        return _check_number(value, limits, "a number or string" if either else "a number")
    if isinstance(value, str):
        if len(value) > limits.max_string_chars:
            return None, (f"string of {len(value)} characters exceeds the limit of "
                          f"{limits.max_string_chars}")
        problem = refused_text(value)
        if problem is not None:
            # Postgres cannot store U+0000 or a lone surrogate: refuse it here, for this
            # row only, before it reaches a micro-batch's write or the spool.
            return None, f"{problem}, which cannot be stored"
        return str(value), None
    return None, f"expected a string, got {_describe(value)}"


def _check_number(value: object, limits: Limits, expected: str) -> tuple[object, str | None]:
    # bool is an Integral; numpy scalars are accepted and turned into plain Python numbers
    # so the logged row stays JSON-serializable.
    if isinstance(value, bool | np.bool_) or not isinstance(value, Real):
        return None, f"expected {expected}, got {_describe(value)}"
    try:
        number: int | float = int(value) if isinstance(value, Integral) else float(value)
    except OverflowError:  # e.g. a Fraction beyond float range
        return None, f"out of range: magnitude must be at most {limits.max_abs_number:g}"
    if isinstance(number, float) and not math.isfinite(number):
        return None, f"must be a finite number, got {number!r}"
    if not -limits.max_abs_number <= number <= limits.max_abs_number:
        return None, (f"out of range: magnitude must be at most {limits.max_abs_number:g}, "
                      f"got {_describe_number(number)}")
    return number, None


# --- many rows ---------------------------------------------------------------------------


def validate_rows(rows: Sequence[object], spec: FeatureSpec | None,
                  limits: Limits = _DEFAULT_LIMITS
                  ) -> tuple[list[int], list[dict[str, object]], dict[int, str]]:
    """(indexes of valid rows, their clean dicts in order, {index: "rows[i].<field>: ..."}).

    Without a schema the first valid row fixes the columns and their types for the rest of
    the batch, so that every kept row fits one DataFrame.
    """
    ok: list[int] = []
    clean: list[dict[str, object]] = []
    errors: dict[int, str] = {}
    for i, row in enumerate(rows):
        if spec is not None and _is_clean(row, spec._checks, limits):
            ok.append(i)
            clean.append(row)  # type: ignore[arg-type]  # _is_clean proved it a dict
            continue
        good, error = _diagnose(row, spec, limits, "features")
        if good is None:
            errors[i] = f"rows[{i}].{error}"
            continue
        if spec is None:
            spec = _infer_spec(good)
        ok.append(i)
        clean.append(good)
    return ok, clean, errors


def _infer_spec(row: Mapping[str, object]) -> FeatureSpec:
    names = tuple(row)
    return FeatureSpec(names, tuple(STRING if type(row[n]) is str else NUMBER for n in names))


def to_frame(clean_rows: Sequence[dict[str, object]], spec: FeatureSpec | None) -> pd.DataFrame:
    """One DataFrame: columns in spec order, numbers as float64, strings as object dtype."""
    if spec is None:
        if not clean_rows:
            return pd.DataFrame(index=pd.RangeIndex(0))
        spec = _infer_spec(clean_rows[0])
    getter = itemgetter(*spec.columns)
    if len(spec.columns) == 1:
        values: list[tuple[object, ...]] = [tuple(map(getter, clean_rows))]
    else:
        values = list(zip(*map(getter, clean_rows), strict=True)) or [()] * len(spec.columns)
    index = pd.RangeIndex(len(clean_rows))
    # pandas 3 would infer its `str` dtype from strings; object is what the models expect.
    data = {
        name: pd.Series(np.array(column, dtype=np.float64), index=index, copy=False)
        if is_number
        else pd.Series(np.array(column, dtype=object), index=index, dtype=object, copy=False)
        for (name, is_number), column in zip(spec._checks, values, strict=True)
    }
    return pd.DataFrame(data, copy=False)


# --- message helpers ---------------------------------------------------------------------


def _path(field: str, key: object) -> str:
    if isinstance(key, str) and _PLAIN_KEY_RE.fullmatch(key) and len(key) <= _ECHO_CHARS:
        return f"{field}.{key}"
    return f"{field}[{_echo(key)}]"


def _describe(value: object) -> str:
    """JSON's name for a value's type, plus a short echo of scalars."""
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, str):
        return f"string {_echo_text(value)}"
    if isinstance(value, Real):
        return f"number {_describe_number(value)}"
    return f"{type(value).__name__}"


def _describe_number(value: object) -> str:
    if isinstance(value, Integral) and abs(int(value)) >= 10 ** _ECHO_CHARS:
        # str() of a huge int is slow and capped by Python; say how big it is instead.
        digits = int(abs(int(value)).bit_length() * math.log10(2)) + 1
        return f"an integer of about {digits} digits"
    return _echo(value)


def _echo(value: object) -> str:
    if isinstance(value, int) and abs(value) >= 10 ** _ECHO_CHARS:
        return _describe_number(value)
    text = repr(value)
    return text if len(text) <= _ECHO_CHARS else text[:_ECHO_CHARS - 1] + "…"


def _echo_text(value: str) -> str:
    """repr of a string, never of a huge one: cut before quoting."""
    if len(value) > _ECHO_CHARS:
        return repr(value[:_ECHO_CHARS - 2]) + "…"
    return repr(value)
