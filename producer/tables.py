"""Rich tables for the CLI and the demo: serving state, models, history, stats."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.table import Table

from producer.serving import PromoteReport, ServingRow


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _count(value: object) -> str:
    """A count with thousands separators, like the floats."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else _fmt(value)


def serving_table(rows: Sequence[ServingRow], title: str = "Serving",
                  highlight: str | None = None) -> Table:
    """One line per model per process; `highlight` marks rows serving that version."""
    table = Table(title=title)
    logs = any(row.prediction_log for row in rows)  # a column only when there is news
    for col in ("node", "pid", "model", "version", "generation", "source", "error"):
        table.add_column(col, overflow="fold")
    if logs:
        table.add_column("prediction log", overflow="fold")
    for row in rows:
        style = "green" if highlight and row.version == highlight else None
        cells = [row.node, _fmt(row.pid), _fmt(row.model), _fmt(row.version),
                 _fmt(row.generation), _fmt(row.source), _fmt(row.error)]
        if logs:
            cells.append(_fmt(row.prediction_log))
        table.add_row(*cells, style=style)
    return table


def promote_summary(report: PromoteReport) -> str:
    """One line: what moved, and how many processes confirmed how fast."""
    total = len(report.confirmed) + len(report.unconfirmed)
    idle = f" ({len(report.idle)} idle: load production on first use)" if report.idle else ""
    return (f"{report.action}: model {report.model!r} {report.from_version or '-'} -> "
            f"{report.to_version} (generation {report.generation}); "
            f"{len(report.confirmed)}/{total} serving process(es) on {len(report.nodes)} "
            f"node(s) confirmed in {report.elapsed_s:.2f} s{idle}")


def models_table(models: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(title="Models")
    for col in ("model", "version", "type", "size KiB", "production", "rmse", "r2", "run_id",
                "created"):
        table.add_column(col, overflow="fold")
    for m in models:
        size = m.get("model_size_bytes")
        table.add_row(_fmt(m.get("model_name")), _fmt(m.get("model_version")),
                      _fmt(m.get("model_type")),
                      _fmt(size / 1024 if isinstance(size, int) else None, 1),
                      _fmt(bool(m.get("is_production"))), _fmt(m.get("rmse_score")),
                      _fmt(m.get("r2_score"), 3), _fmt(m.get("run_id")),
                      _fmt(m.get("created_at")))
    return table


def history_table(entries: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(title="Promotion history")
    for col in ("when", "model", "action", "from", "to", "generation", "by", "reason"):
        table.add_column(col, overflow="fold")
    for h in entries:
        table.add_row(_fmt(h.get("promoted_at")), _fmt(h.get("model_name")),
                      _fmt(h.get("action")), _fmt(h.get("from_version")),
                      _fmt(h.get("to_version")), _fmt(h.get("generation")),
                      _fmt(h.get("promoted_by")), _fmt(h.get("reason")))
    return table


def stats_table(stats: Iterable[Mapping[str, Any]], title: str = "Per-version report") -> Table:
    """Counts, label coverage, MAE and RMSE per model version."""
    table = Table(title=title)
    for col in ("model", "version", "predictions", "labelled", "coverage", "MAE", "RMSE",
                "last prediction"):
        table.add_column(col, overflow="fold")
    for s in stats:
        coverage = s.get("coverage")
        table.add_row(_fmt(s.get("model_name")), _fmt(s.get("model_version")),
                      _count(s.get("predictions")), _count(s.get("labelled")),
                      f"{coverage:.1%}" if isinstance(coverage, float) else "-",
                      _fmt(s.get("mae")), _fmt(s.get("rmse")), _fmt(s.get("last_prediction")))
    return table


def predictions_table(results: Iterable[Mapping[str, Any]], title: str = "Predictions") -> Table:
    table = Table(title=title)
    for col in ("request_id", "version", "prediction", "confidence", "error"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(_fmt(r.get("request_id")), _fmt(r.get("model_version")),
                      _fmt(r.get("prediction")), _fmt(r.get("confidence"), 3),
                      _fmt(r.get("error")))
    return table
