"""The columnar `predict_batch` payload: `columns: list[str]` + `data: list[list]`.

That is pandas' `DataFrame.to_dict(orient="split")` shape without the index. It carries
each feature name once instead of once per row, so the message is smaller and decodes
faster. Each data row becomes the same feature dict the row payload would have carried
(`dict(zip(columns, row))`, one C-level call), so validation, predictions, errors and
logged rows are identical to the row payload's for the same input.

Whole-batch problems (columns not a list of distinct strings, data not a list, both
`rows` and `columns`) refuse the batch; a data row that is not a list of the right length
is that row's error only.
"""

from __future__ import annotations

from typing import Any

from modelstore.settings import Settings

_ECHO = 40


def columnar_problem(rows: object, columns: object, data: object) -> str | None:
    """The whole-batch problem of a columnar payload, or None."""
    if rows is not None:
        return "rows: give either rows or columns + data, not both"
    if not isinstance(columns, list):
        return f"columns: expected a list of feature names, got {_json_type(columns)}"
    if not columns:
        return "columns: must name at least one feature"
    seen: dict[str, int] = {}
    for i, name in enumerate(columns):
        if type(name) is not str:
            return f"columns[{i}]: expected a string, got {_json_type(name)}"
        if name in seen:
            return f"columns[{i}]: duplicate of columns[{seen[name]}] ({name!r:.{_ECHO}})"
        seen[name] = i
    if data is None:
        return "data: missing (columns need data: a list of rows, each a list of values)"
    if not isinstance(data, list):
        return f"data: expected a list of rows (each a list of values), got {_json_type(data)}"
    return None


def to_rows(columns: list[str], data: list[Any]) -> tuple[list[object], dict[int, str]]:
    """(one feature dict per data row, {index: error} for rows of the wrong shape).

    A misshapen row keeps its place (as None) so results stay in input order.
    """
    width = len(columns)
    rows: list[object] = []
    errors: dict[int, str] = {}
    for i, values in enumerate(data):
        if type(values) is list and len(values) == width:
            rows.append(dict(zip(columns, values, strict=True)))
            continue
        rows.append(None)
        if isinstance(values, list):
            errors[i] = (f"rows[{i}]: {len(values)} values, expected {width} "
                         "(one per column)")
        else:
            errors[i] = (f"rows[{i}]: expected a list of {width} values (one per column), "
                         f"got {_json_type(values)}")
    return rows, errors


def batch_problem(rows: object, request_ids: object, settings: Settings,
                  what: str = "rows") -> str | None:
    """The whole-batch problem of a list of rows (either payload), or None."""
    if not isinstance(rows, list):
        return f"rows: expected a list of feature objects, got {type(rows).__name__}"
    if not rows:
        return f"{what}: empty batch"
    if len(rows) > settings.max_rows_per_task:
        return (f"{what}: {len(rows)} rows exceed the cap of {settings.max_rows_per_task} per "
                "task (PREDQ_MAX_ROWS_PER_TASK); split the batch")
    if request_ids is not None and (not isinstance(request_ids, list)
                                    or len(request_ids) != len(rows)):
        return f"request_ids: expected a list as long as {what}"
    return None


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The `return_results=false` answer: a count of predicted (and logged) rows and the
    errors, each with its row's position."""
    errors = [{"index": i, "request_id": r.get("request_id"), "error": r["error"]}
              for i, r in enumerate(result["results"]) if "error" in r]
    return {"model_version": result["model_version"], "model_sha256": result["model_sha256"],
            "count": len(result["results"]) - len(errors), "errors": errors}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__
