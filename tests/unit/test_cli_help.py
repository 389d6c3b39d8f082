"""Every `predq` command exists and answers --help without touching any service."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from producer.cli import cli, main

REQUIRED = {"worker", "predict", "register", "promote", "rollback", "reload", "serving",
            "models", "history", "backfill", "stats", "db", "demo"}


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, (*prefix, name)))
    return paths


def test_the_group_has_every_subcommand_of_the_issue() -> None:
    assert set(cli.commands) >= REQUIRED
    assert {"init", "upgrade"} <= set(cli.commands["db"].commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", command_paths(cli), ids=" ".join)
def test_help_of_each_command(path: tuple[str, ...]) -> None:
    # A malformed environment must not break --help: settings are parsed on first use.
    result = CliRunner().invoke(cli, [*path, "--help"], env={"PREDQ_WORKER_THREADS": "x"})
    assert result.exit_code == 0, result.output
    assert f"Usage: cli {' '.join(path)}" in result.output or \
        f"Usage: predq {' '.join(path)}" in result.output


def test_main_runs_the_group_as_predq(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "Usage: predq [OPTIONS] COMMAND" in capsys.readouterr().out
