"""`predict_batch` payload shapes for the serving benchmark (issue 16): the row payload
(`rows: [{...}]`) and the columnar one (`columns` + `data`), each with results returned
and with `return_results=false`, every one against the same in-process ceiling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.serving_ceiling import ceiling
from bench.serving_load import Run, send_collect

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


def run_batches(bench: Any, model_file: str, dsn: str, log: Callable[[str], None]) -> None:
    """Step [4] of the serving bench: per round, the ceiling on that round's rows, then
    every payload shape on the same rows through the workers."""
    cfg = bench.cfg
    log(f"\n[4] predict_batch: {cfg.batch_tasks} tasks x {cfg.batch_rows:,} rows, each "
        f"payload shape, vs 2 processes doing DataFrame + predict + COPY in-process")
    for r in range(1, cfg.batch_rounds + 1):
        rows = bench.batch_calls("unused-", cfg.batch_tasks, cfg.batch_rows, seed=100 + r)
        seconds, _, n = ceiling(model_file, dsn, [c["rows"] for c in rows], 2,
                                "bench-v1", f"c{r}")
        base = bench.record("ceiling", Run("in-process ceiling, 2 processes", n, seconds))
        log(f"  round {r}:")
        bench.show(base, "rows")
        for k, (key, label, columnar, results, _) in enumerate(SHAPES):
            prefix = f"b{r}{k}-"
            calls = shaped(rows, prefix, columnar, results)
            bench.broker.wait_idle()
            bench.fresh_app()
            run = bench.measured(key, send_collect, bench.app, "predq.predict_batch", calls,
                                 f"predict_batch, {label}"[:34],
                                 items_per_call=cfg.batch_rows, rows=(bench.rows, prefix),
                                 broker=bench.broker)
            bench.show(run, "rows", base)
