"""`predq predict --input FILE`: the table is checked before anything is sent, results
come back one per input row in order, and failed rows make the command exit 1."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pandas as pd

from modelstore.errors import StoreError
from producer import frame_check, payloads
from producer.cli_context import state
from producer.files import read_table, results_frame, write_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileRequest:
    input_path: Path
    output: Path | None
    model: str
    version: str | None
    id_column: str
    id_column_given: bool
    exclude: tuple[str, ...]
    chunk_size: int
    timeout: float
    progress: bool | None
    allow_errors: bool


def predict_file(req: FileRequest) -> None:
    frame = read_table(req.input_path)
    where = f"--input {req.input_path}"
    absent = [c for c in req.exclude if c not in frame.columns]
    if absent:
        raise click.BadParameter(f"column(s) {', '.join(absent)} not in {req.input_path}",
                                 param_hint="--exclude")
    has_ids = req.id_column in frame.columns
    features = frame.drop(columns=[*req.exclude, *([req.id_column] if has_ids else [])])
    used, schema = _recorded_schema(req.model, req.version)
    label = frame_check.csv_row if req.input_path.suffix.lower() == ".csv" \
        else frame_check.table_row
    checked = frame_check.check_frame(
        features, schema, where=where, expects=f"model {req.model!r} version {used!r}",
        label=label, missing_id=req.id_column if req.id_column_given and not has_ids else None)
    ids = (frame[req.id_column].astype(str).tolist() if has_ids
           else [payloads.new_request_id() for _ in range(len(frame))])
    results = _send(req, checked, ids, label)
    target = req.output or req.input_path.with_suffix(".predictions.csv")
    out = results_frame(results)
    write_table(out, target)
    _summarize(out, target, req.allow_errors, req.model)


def _recorded_schema(model: str, version: str | None
                     ) -> tuple[str | None, dict[str, Any] | None]:
    """The version that will serve and its recorded feature schema, when the store has it.

    Without the store (unreachable, or no production row: workers may serve a model
    file) the columns' types are inferred from the table instead.
    """
    try:
        used, schema = state().db().feature_schema(model, version)
    except StoreError as exc:
        log.info("no recorded feature schema for model %r: %s", model, exc)
        return None, None
    return used, schema


def _send(req: FileRequest, checked: frame_check.CheckedTable, ids: list[str],
          label: frame_check.RowLabel) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    if checked.rows:
        sent = state().client.predict_many(
            checked.rows, chunk_size=req.chunk_size, model=req.model, timeout=req.timeout,
            progress=req.progress, request_ids=[ids[p] for p in checked.positions],
            version=req.version)
    results: list[dict[str, Any]] = [{}] * len(ids)
    for position, result in zip(checked.positions, sent, strict=True):
        if "error" in result:
            result = {**result, "error": frame_check.renumber(str(result["error"]), position,
                                                             label)}
        results[position] = result
    for position, message in checked.errors.items():
        results[position] = {"request_id": ids[position], "error": message}
    return results


def _summarize(out: pd.DataFrame, target: Path, allow_errors: bool, model: str) -> None:
    failed = out["error"].notna()
    errors = int(failed.sum())
    versions = out["model_version"].dropna().value_counts().to_dict()
    served = ", ".join(f"{v} ({n:,})" for v, n in versions.items()) or "none"
    click.echo(f"wrote {len(out):,} results to {target}: {errors:,} error(s); "
               f"versions: {served}")
    if errors and not allow_errors:
        first = out.loc[failed, "error"].iloc[0]
        known = state().known_models(unless=model)
        raise click.ClickException(
            f"{errors:,} of {len(out):,} row(s) failed (first: {first}); see the error "
            f"column of {target}, or pass --allow-errors to exit 0"
            + (f"; {known}" if known else ""))
