"""The `predq` command line: workers, predictions, registration, the store and the demo.

Ops commands (promote, rollback, reload, serving, models, history, backfill, stats) live
in producer.cli_ops. Logging is configured in `main()` only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
from celery.exceptions import TimeoutError as CeleryTimeoutError
from click.core import ParameterSource
from rich.console import Console
from rich.logging import RichHandler

from modelstore.engine import redact_url
from modelstore.errors import PredqError
from producer import cli_db, cli_dead, cli_ops, cli_register
from producer.cli_context import CliState, state
from producer.cli_predict import FileRequest, predict_file
from producer.errors import PredictionError
from producer.worker_procs import worker_command

log = logging.getLogger(__name__)


class PredqGroup(click.Group):
    """Turns predq errors, missing files and timeouts into one line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (PredqError, CeleryTimeoutError) as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from exc


@click.group(cls=PredqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="predq", prog_name="predq",
                      message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """predq: message-queue prediction workers with a Postgres model registry.

    Configuration comes from the environment (DATABASE_URL, PREDQ_BROKER_URL, ...; see the
    README).
    """
    cli_state = ctx.ensure_object(CliState)
    ctx.call_on_close(cli_state.close)
    if verbose:
        logging.getLogger().setLevel(logging.INFO)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a worker: `celery -A workers worker --pool threads` with predq's defaults.

    Extra arguments go to celery (e.g. `predq worker -n w1@%h --loglevel DEBUG`).
    """
    argv = worker_command(state().settings.worker_threads, celery_args)
    log.info("exec %s", " ".join(argv))
    exec_process(argv)


def exec_process(argv: list[str]) -> None:
    """Replace this process (a seam tests replace)."""
    sys.stdout.flush()
    os.execv(argv[0], argv)


@cli.command()
@click.argument("row", required=False)
@click.option("--input", "input_path", type=click.Path(dir_okay=False, path_type=Path),
              help="A .csv or .parquet file of feature rows.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where results go (.csv or .parquet); default <input>.predictions.csv.")
@click.option("--model", default="default", show_default=True, help="Model name.")
@click.option("--model-version", default=None, help="Pin a stored version, not production.")
@click.option("--request-id", default=None, help="Request id of a single ROW.")
@click.option("--id-column", default="request_id", show_default=True,
              help="Input column used as request_id when present.")
@click.option("--exclude", multiple=True, help="Input column not sent as a feature "
              "(repeatable, e.g. --exclude price).")
@click.option("--chunk-size", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for each result.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: when stderr is a terminal).")
@click.option("--allow-errors", is_flag=True,
              help="Exit 0 even when some rows of --input failed.")
def predict(row: str | None, input_path: Path | None, output: Path | None, model: str,
            model_version: str | None, request_id: str | None, id_column: str,
            exclude: tuple[str, ...], chunk_size: int, timeout: float,
            progress: bool | None, allow_errors: bool) -> None:
    """Predict one JSON ROW (printed as JSON), or every row of --input into --output.

    An --input table is checked before anything is sent: its columns against the
    model's recorded features (one message for every missing or unexpected column), then
    each cell against its column's type, so a bad cell fails only its row. Errors name
    the file's rows. Exits 1 when any row failed, unless --allow-errors.
    """
    if (row is None) == (input_path is None):
        raise click.UsageError("give either one JSON ROW or --input FILE, not both or neither")
    if row is not None:
        try:
            result = state().client.predict(_parse_row(row), model=model,
                                            request_id=request_id, timeout=timeout,
                                            version=model_version)
        except PredictionError as exc:
            known = state().known_models(unless=model)
            raise click.ClickException(f"{exc}; {known}" if known else str(exc)) from exc
        click.echo(json.dumps(result))
        return
    assert input_path is not None
    given = click.get_current_context().get_parameter_source("id_column")
    predict_file(FileRequest(input_path, output, model, model_version, id_column,
                             given is not ParameterSource.DEFAULT, exclude, chunk_size,
                             timeout, progress, allow_errors))


def _parse_row(row: str) -> dict[str, Any]:
    try:
        value = json.loads(row)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc.msg} at char {exc.pos}",
                                 param_hint="ROW") from None
    if not isinstance(value, dict):
        raise click.BadParameter(f"expected a JSON object of features, got "
                                 f"{type(value).__name__}", param_hint="ROW")
    return value


@cli.group()
def db() -> None:
    """Create or migrate the model store schema."""


@db.command("init")
def db_init() -> None:
    """Create the schema on an empty database (a no-op when it is current)."""
    cli_state = state()
    cli_state.db()
    click.echo(f"predq schema ready at {redact_url(cli_state.settings.database_url)}")


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate an older schema (the seed's tables, or an older predq) to the current one."""
    try:
        from modelstore.migrate import upgrade
    except ImportError as exc:
        raise click.ClickException(f"db upgrade: modelstore.migrate is unavailable: {exc}"
                                   ) from exc
    settings = state().settings
    url = settings.database_url
    steps = upgrade(url, signing_key=settings.signing_key,
                    connect_timeout_s=settings.connect_timeout_s, grain=settings.log_partition)
    for step in steps:
        click.echo(f"applied: {step}")
    click.echo(f"{redact_url(url)}: schema is current" + ("" if steps else " (nothing to do)"))


@cli.command()
@click.option("--dir", "workdir", default=".predq-demo", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Work directory (wiped first; only one the demo created).")
@click.option("--rows", default=3000, show_default=True, type=click.IntRange(min=10),
              help="Rows predicted before and after the promote.")
@click.option("--model", default=None,
              help="Model name (default: 'default' embedded, 'demo' on real services).")
def demo(workdir: Path, rows: int, model: str | None) -> None:
    """Train, register, serve through two real workers, backfill, promote v2, report.

    Runs with no services (SQLite + a filesystem broker) unless DATABASE_URL and
    PREDQ_BROKER_URL are both set, in which case it uses them.
    """
    from producer.demo import DemoConfig, run_demo

    console = state().out
    run_demo(DemoConfig(workdir=workdir, rows=rows, model=model), console, os.environ)


for _db_command in cli_db.COMMANDS:
    db.add_command(_db_command)
cli.add_command(cli_register.register)
cli.add_command(cli_register.sign)
cli.add_command(cli_dead.dead)
for _command in cli_ops.COMMANDS:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: configure logging, then run the click group."""
    level = os.environ.get("PREDQ_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, format="%(name)s: %(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False,
                                              console=Console(stderr=True))])
    cli.main(args=argv, prog_name="predq")


if __name__ == "__main__":
    main()
