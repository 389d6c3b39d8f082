"""docker-compose.yml parses, and every service built from this repo runs a real entry
point: a `predq` command the click group accepts (options included) or `celery -A workers`
with the workers package present. No Docker engine is needed."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from producer.cli import cli

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def commands_of(command: str | list[str]) -> list[list[str]]:
    """The programs a service runs: `sh -c "a && b"` is split into a and b."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if argv[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in argv[2].split("&&")]
    return [argv]


def check_predq(args: list[str]) -> None:
    """Resolve subcommands through the click group and parse the leaf's options."""
    command: click.Command = cli
    ctx = click.Context(cli, info_name="predq")
    while isinstance(command, click.Group):
        assert args, f"predq {command.name}: no subcommand"
        name, args = args[0], args[1:]
        assert name in command.commands, f"predq has no subcommand {name!r}"
        command = command.commands[name]
    command.make_context(command.name, list(args), parent=ctx)


def check_entry_point(argv: list[str]) -> None:
    if argv[0] == "predq":
        check_predq(argv[1:])
    elif argv[0] == "celery":
        assert argv[1:3] == ["-A", "workers"], f"celery app must be workers: {argv}"
        assert (ROOT / "workers" / "__init__.py").is_file()
        assert argv[3] in {"worker", "flower", "inspect", "status"}, argv
    else:
        raise AssertionError(f"unknown entry point {argv[0]!r} in {argv}")


def test_every_repo_service_runs_a_real_entry_point(compose: dict[str, Any]) -> None:
    built = {name: svc for name, svc in compose["services"].items()
             if "build" in svc or str(svc.get("image", "")).startswith("predq")}
    assert {"worker", "init"} <= set(built)
    for name, svc in built.items():
        assert "command" in svc, f"service {name} has no command"
        for argv in commands_of(svc["command"]):
            check_entry_point(argv)


def test_the_entry_point_check_can_fail() -> None:
    with pytest.raises(AssertionError, match="no subcommand 'serve'"):
        check_entry_point(["predq", "serve"])
    with pytest.raises(click.UsageError):
        check_entry_point(["predq", "register", "--no-such-flag"])
    with pytest.raises(AssertionError):
        check_entry_point(["celery", "-A", "other", "worker"])


def test_postgres_matches_the_seed_and_keeps_its_data(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    assert pg["image"] == "postgres:15"
    assert "5433:5432" in pg["ports"]
    assert "POSTGRES_PASSWORD" in pg["environment"]
    volume = pg["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_redis_workers_init_and_flower(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["redis"]["image"] == "redis:7"
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert worker["command"] == ["predq", "worker"]
    assert worker["depends_on"]["init"]["condition"] == "service_completed_successfully"
    init = " ".join(services["init"]["command"])
    assert "predq db init" in init and "predq register --demo" in init
    assert services["init"]["restart"] == "no"
    assert services["flower"]["profiles"] == ["flower"]
    env = worker["environment"]
    assert env["PREDQ_BROKER_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    assert "@redis:6379/0" in env["PREDQ_BROKER_URL"]
    assert "@postgres:5432/" in env["DATABASE_URL"]


def test_rabbitmq_profile_points_its_workers_at_rabbitmq(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]
    worker = services["worker-amqp"]
    assert worker["profiles"] == ["rabbitmq"] and worker["command"] == ["predq", "worker"]
    env = worker["environment"]
    assert env["PREDQ_BROKER_URL"].startswith("amqp://predq:")
    assert env["PREDQ_BROKER_URL"].endswith("@rabbitmq:5672//")
    assert env["PREDQ_RESULT_BACKEND"].startswith("redis://:${REDIS_PASSWORD:?")
    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert worker["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert services["rabbitmq"]["volumes"][0].split(":")[0] in compose["volumes"]


def test_dockerfile_builds_from_python_311_slim_and_installs_the_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert [line for line in text.splitlines() if line.startswith("FROM ")] == [
        "FROM python:3.11-slim"]
    assert "RUN pip install -c constraints.txt ." in text
    for package in ("modelstore", "workers", "producer"):
        assert f"COPY {package} ./{package}" in text


def test_redis_keeps_queued_tasks_and_needs_a_password(compose: dict[str, Any]) -> None:
    """A Redis restart must not drop queued tasks (AOF on a volume), and the broker is not
    open to whoever reaches the port (issue 12, item 10)."""
    redis = compose["services"]["redis"]
    argv = commands_of(redis["command"])[0]
    if argv[0] == "exec":
        argv = argv[1:]
    assert argv[0] == "redis-server"
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--requirepass") + 1] == "$$REDIS_PASSWORD"
    # The password comes from the environment and compose refuses to start without it.
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    volume, target = redis["volumes"][0].split(":")[:2]
    assert target == "/data" and volume in compose["volumes"]
    assert "$$REDIS_PASSWORD" in " ".join(redis["healthcheck"]["test"])
    for svc in ("worker", "init", "flower"):
        env = compose["services"][svc]["environment"]
        for key in ("PREDQ_BROKER_URL", "PREDQ_RESULT_BACKEND"):
            assert env[key].startswith("redis://:${REDIS_PASSWORD:?"), (svc, key)
def test_postgres_password_comes_from_the_environment_with_no_default(
        compose: dict[str, Any]) -> None:
    """Issue 10: no well-known password; compose refuses to start without one."""
    required = "${POSTGRES_PASSWORD:?"
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        required)
    url = compose["x-predq-env"]["DATABASE_URL"]
    assert f"postgres:{required}" in url and ":-" not in url
