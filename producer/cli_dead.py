"""`predq dead list|requeue|purge`: the messages parked in `predq.dead`."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from producer.cli_context import state
from producer.dead import DeadMessage, dead_letters

DEFAULT_LIMIT = 100


@click.group()
def dead() -> None:
    """Poison messages parked after too many deliveries (RabbitMQ) or by workers (Redis)."""


def _when(ts: float | None) -> str:
    if ts is None:
        return "?"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _line(m: DeadMessage) -> str:
    deliveries = "" if m.deliveries is None else f" deliveries={m.deliveries}"
    return (f"{_when(m.parked_at)}  {m.task or '?'}  id={m.task_id or '?'}  queue={m.queue}  "
            f"reason={m.reason}{deliveries}")


@dead.command("list")
@click.option("--limit", default=DEFAULT_LIMIT, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
def dead_list(limit: int, as_json: bool) -> None:
    """Show parked messages (nothing is removed)."""
    messages = dead_letters(state().settings).list(limit)
    if as_json:
        click.echo(json.dumps([m.as_dict() for m in messages]))
        return
    for m in messages:
        click.echo(_line(m))
    click.echo(f"{len(messages)} parked message(s) shown" +
               (f" (at most {limit})" if len(messages) == limit else ""))


@dead.command("requeue")
@click.option("--limit", default=DEFAULT_LIMIT, show_default=True, type=click.IntRange(min=1))
def dead_requeue(limit: int) -> None:
    """Put parked messages back on their queue, oldest first (fix the cause first)."""
    moved = dead_letters(state().settings).requeue(limit)
    click.echo(f"requeued {moved} message(s)")


@dead.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_purge(yes: bool) -> None:
    """Delete every parked message."""
    if not yes:
        click.confirm("Delete every message parked in predq.dead?", abort=True)
    purged = dead_letters(state().settings).purge()
    click.echo(f"purged {purged} message(s)")
