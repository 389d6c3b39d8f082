"""`predict_batch` payload shapes for the serving benchmark (issue 16): the row payload
(`rows: [{...}]`) and the columnar one (`columns` + `data`), each with results returned
and with `return_results=false`, every one against the same in-process ceiling."""

from __future__ import annotations

from typing import Any

SHAPES: tuple[tuple[str, str, bool, bool, float | None], ...] = (
    # key, label, columnar, return_results, target ratio to the ceiling
    ("batch", "rows, results", False, True, 0.85),
    ("batch-quiet", "rows, return_results=false", False, False, None),
    ("batch-col", "columnar, results", True, True, 0.95),
    ("batch-col-quiet", "columnar, return_results=false", True, False, 1.0),
)


def shaped(calls: list[dict[str, Any]], prefix: str, columnar: bool,
           return_results: bool) -> list[dict[str, Any]]:
    """The same rows as `calls` (kwargs with `rows`), with request ids under `prefix`, in
    one payload shape."""
    out = []
    for t, call in enumerate(calls):
        rows = call["rows"]
        kwargs: dict[str, Any] = {"request_ids": [f"{prefix}{t}:{i}" for i in range(len(rows))]}
        if columnar:
            columns = list(rows[0])
            kwargs.update(columns=columns, data=[[r[c] for c in columns] for r in rows])
        else:
            kwargs["rows"] = rows
        if not return_results:
            kwargs["return_results"] = False
        out.append(kwargs)
    return out
