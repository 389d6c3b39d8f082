"""Ops commands: promote, rollback, reload, serving, models, history, backfill, stats,
report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from modelstore.engine import redact_url
from modelstore.errors import ModelNotFound, RollbackError
from producer import tables
from producer.cli_context import state
from producer.serving import PromoteReport, ServingRow

UNCONFIRMED_EXIT = 3
"""Exit code when the database moved but some worker process did not confirm in time."""
BROADCAST_FAILED_EXIT = 4
"""Exit code when the database moved but the broadcast could not be sent (broker down)."""
_EXIT_CODES = ("Exit codes: 0 every replying process serves it (or it already was "
               "production: nothing changed); 1 nothing changed (error); 3 the database "
               "moved but a process did not confirm in time; 4 the database moved but the "
               "broker was unreachable: workers switch at their next production pointer "
               "poll (PREDQ_GENERATION_POLL).")

_model = click.option("--model", default="default", show_default=True, help="Model name.")
_timeout = click.option("--timeout", default=10.0, show_default=True,
                        type=click.FloatRange(min=0.1),
                        help="Seconds to wait for every process to confirm.")
_reason = click.option("--reason", default=None, help="Why, for the promotion history.")
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, default=str, indent=1))


def _rows_json(rows: list[ServingRow]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in rows]


def confirm_switch(report: PromoteReport) -> None:
    """Print what moved and who confirmed; exit 3 naming the processes that did not."""
    cli_state = state()
    if not report.changed:
        click.echo(f"model {report.model!r} already serves {report.to_version!r} in "
                   f"production (generation {report.generation}): nothing changed")
        return
    cli_state.out.print(tables.promote_summary(report))
    rows = sorted(report.confirmed + report.unconfirmed + report.idle,
                  key=lambda r: (r.node, r.pid or 0))
    if rows:
        cli_state.out.print(tables.serving_table(rows, "Serving after the switch",
                                                 report.to_version))
    problem = report.problem()
    if problem:
        click.echo(f"Error: {problem}", err=True)
        code = UNCONFIRMED_EXIT if report.broadcast_error is None else BROADCAST_FAILED_EXIT
        click.get_current_context().exit(code)


@click.command(epilog=_EXIT_CODES)
@click.argument("version")
@_model
@_timeout
@_reason
def promote(version: str, model: str, timeout: float, reason: str | None) -> None:
    """Make VERSION production and wait until every worker process serves it."""
    try:
        report = state().client.promote(version, model, timeout=timeout, reason=reason)
    except ModelNotFound as exc:
        raise click.ClickException(_with_known(str(exc), model)) from exc
    confirm_switch(report)


@click.command(epilog=_EXIT_CODES)
@click.option("--to", "to_version", default=None,
              help="Version to go back to (default: the previous production version).")
@_model
@_timeout
@_reason
def rollback(to_version: str | None, model: str, timeout: float, reason: str | None) -> None:
    """Go back to an earlier production version, confirmed like promote."""
    try:
        report = state().client.rollback(to_version, model, timeout=timeout, reason=reason)
    except (ModelNotFound, RollbackError) as exc:
        raise click.ClickException(_with_known(str(exc), model)) from exc
    confirm_switch(report)


def _with_known(message: str, model: str | None = None) -> str:
    """The message, plus the known model names unless `model` is one of them."""
    known = state().known_models(unless=model)
    return f"{message}; {known}" if known else message


def _empty(what: str, model: str | None) -> None:
    """An empty listing says so, and what to try next."""
    where = f" for model {model!r}" if model else ""
    click.echo(_with_known(f"no {what}{where}"), err=True)


@click.command()
@click.option("--model", default=None, help="Only this model (default: every model).")
@click.option("--timeout", default=1.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to collect replies.")
@_json
def reload(model: str | None, timeout: float, as_json: bool) -> None:
    """Make every worker drop its caches and reload production."""
    rows = state().client.reload(model, timeout=timeout)
    _print_serving(rows, "Reloaded", as_json)


@click.command()
@click.option("--model", default=None, help="Only this model (default: every model).")
@click.option("--timeout", default=1.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to collect replies.")
@_json
def serving(model: str | None, timeout: float, as_json: bool) -> None:
    """What every process of every worker serves: version, generation, source."""
    _print_serving(state().client.serving(model, timeout=timeout), "Serving", as_json)


def _print_serving(rows: list[ServingRow], title: str, as_json: bool) -> None:
    if as_json:
        _echo_json(_rows_json(rows))
        return
    if not rows:
        broker = redact_url(state().settings.broker_url)
        click.echo(f"Error: no worker replied at {broker}; start one with `predq worker`",
                   err=True)
        click.get_current_context().exit(UNCONFIRMED_EXIT)
    state().out.print(tables.serving_table(rows, title))


@click.command()
@click.option("--model", default=None, help="Only this model name.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@_json
def models(model: str | None, limit: int, as_json: bool) -> None:
    """Stored model versions, newest first."""
    rows = state().db().list_models(limit=limit, model_name=model)
    if as_json:
        _echo_json(rows)
    elif not rows:
        _empty("stored versions", model)
    else:
        state().out.print(tables.models_table(rows))


@click.command()
@click.option("--model", default=None, help="Only this model name.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@_json
def history(model: str | None, limit: int, as_json: bool) -> None:
    """Promotions and rollbacks: who, when, from, to, why."""
    rows = state().db().promotion_history(model_name=model, limit=limit)
    if as_json:
        _echo_json(rows)
    elif not rows:
        _empty("promotions or rollbacks", model)
    else:
        state().out.print(tables.history_table(rows))


@click.command()
@click.argument("csv_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.1))
def backfill(csv_file: Path, timeout: float) -> None:
    """Record actual values from CSV_FILE (columns request_id,actual_value)."""
    outcome = state().client.backfill(csv_file, timeout=timeout)
    click.echo(f"updated {outcome['updated']}, unknown {len(outcome['unknown'])}, "
               f"invalid {len(outcome['invalid'])}")
    for rid, message in list(outcome["invalid"].items())[:10]:
        click.echo(f"  invalid {rid}: {message}", err=True)


@click.command()
@click.option("--model", default=None, help="Only this model name.")
@_json
def stats(model: str | None, as_json: bool) -> None:
    """Per version: predictions, labelled rows, label coverage, MAE and RMSE."""
    rows = state().db().prediction_stats(model)
    if as_json:
        _echo_json(rows)
    elif not rows:
        _empty("logged predictions", model)
    else:
        state().out.print(tables.stats_table(rows))


@click.command()
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML page to write (self-contained: opens offline).")
@click.option("--png", "png_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the charts as a PNG.")
@click.option("--days", default=7, show_default=True, type=click.IntRange(min=1),
              help="Window: the last N days of predictions and promotions.")
@click.option("--model", default=None, help="Only this model name (default: every model).")
def report(output: Path, png_path: Path | None, days: int, model: str | None) -> None:
    """Live error (MAE/RMSE) and label coverage per version, volume, promotion timeline."""
    from producer.report import summary, write_report

    data = write_report(state().db(), output, png_path, days=days, model=model)
    click.echo(summary(data, [output, *([png_path] if png_path else [])]))


COMMANDS = (promote, rollback, reload, serving, models, history, backfill, stats, report)
