"""`predq db maintain | prune | refresh-rollups`: the prediction log's partitions and rollups
(modelstore/partitions.py, modelstore/rollups.py)."""

from __future__ import annotations

import click

from modelstore import partitions, rollups
from modelstore.engine import redact_url, translate_errors
from modelstore.errors import InvalidInput
from producer.cli_context import state


@click.command("maintain")
def db_maintain() -> None:
    """Create the log's partitions ahead (PREDQ_LOG_PARTITION, PREDQ_LOG_PARTITIONS_AHEAD)
    and, with PREDQ_LOG_RETENTION_DAYS, drop the expired ones. Workers do this hourly."""
    settings = state().settings
    engine = state().db().engine
    with translate_errors("maintaining the prediction log"):
        created = partitions.ensure_ahead(engine, settings.log_partition,
                                          settings.log_partitions_ahead)
        dropped: list[str] = []
        if settings.log_retention_days:
            age = partitions.parse_age(f"{settings.log_retention_days}d")
            dropped = partitions.prune(engine, age, settings.log_partition)
    for name in created:
        click.echo(f"created partition {name}")
    for name in dropped:
        click.echo(f"dropped partition {name}")
    click.echo(f"{redact_url(settings.database_url)}: {len(created)} partition(s) created, "
               f"{len(dropped)} dropped")


@click.command("prune")
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="Drop partitions wholly older than this: 30d, 12h, 2w.")
@click.option("--force", is_flag=True,
              help="Allow an age that drops everything before the current period.")
def db_prune(older_than: str, force: bool) -> None:
    """Drop whole partitions of the prediction log (never DELETE). Their figures stay in
    the rollups, so `predq stats` still counts every row ever logged."""
    settings = state().settings
    try:
        age = partitions.parse_age(older_than)
        engine = state().db().engine
        with translate_errors("pruning the prediction log"):
            dropped = partitions.prune(engine, age, settings.log_partition, force=force)
    except InvalidInput as exc:
        raise click.UsageError(str(exc)) from exc
    for name in dropped:
        click.echo(f"dropped partition {name}")
    click.echo(f"{len(dropped)} partition(s) dropped")


@click.command("refresh-rollups")
def db_refresh_rollups() -> None:
    """Rebuild the rollups of the rows still in the log, for writes their triggers could
    not see (straight into a partition, TRUNCATE, triggers disabled)."""
    engine = state().db().engine
    with translate_errors("refreshing the rollups"):
        written = rollups.refresh(engine)
    click.echo(f"rollups rebuilt: {written} (model, version, role, hour) rows")


COMMANDS = (db_maintain, db_prune, db_refresh_rollups)
