"""Shared fixtures: fresh Postgres databases, SQLite files, a Redis database.

With CI=true an unreachable Postgres or Redis fails the test; elsewhere it skips.
TEST_DATABASE_URL overrides the Postgres server URL (any database on the server).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from modelstore.engine import dispose_engines
from tests.support import rabbit

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_SERVER_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_SERVER_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")


def unavailable(what: str, exc: BaseException) -> None:
    """Fail under CI, skip elsewhere."""
    message = f"{what} unreachable: {type(exc).__name__}: {exc}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _server_url() -> URL:
    url = make_url(PG_SERVER_URL)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg2")
    return url


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[object]:
    """An autocommit engine on the server's admin database."""
    engine = create_engine(_server_url(), isolation_level="AUTOCOMMIT",
                           connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means the server is unusable
        engine.dispose()
        unavailable(f"PostgreSQL at {_server_url().render_as_string(hide_password=True)}", exc)
    yield engine
    engine.dispose()


def create_database(admin: object) -> str:
    name = f"predq_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:  # type: ignore[attr-defined]
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return _server_url().set(database=name).render_as_string(hide_password=False)


def drop_database(admin: object, url: str) -> None:
    dispose_engines()
    name = make_url(url).database
    with admin.connect() as conn:  # type: ignore[attr-defined]
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def fresh_database(admin: object) -> Iterator[str]:
    """A fresh, empty Postgres database, dropped when the generator closes."""
    url = create_database(admin)
    try:
        yield url
    finally:
        drop_database(admin, url)


@pytest.fixture
def pg_url(pg_admin: object) -> Iterator[str]:
    """A fresh, empty Postgres database for one test, dropped afterwards."""
    yield from fresh_database(pg_admin)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite database file for one test."""
    yield f"sqlite:///{tmp_path / 'predq.db'}"
    dispose_engines()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on a fresh Postgres database."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


_REDIS_TEST_DBS = [db for db in range(2, 16) if db != 11]  # the benchmarks use 11
_CLAIM_TTL_S = 3600


def _claim_redis_db() -> tuple[redis.Redis, int, str]:
    """A database index no other test run on this machine holds right now (several
    checkouts may run their suites at once): claimed with SET NX in database 0."""
    admin = redis.Redis.from_url(f"{REDIS_SERVER_URL}/0", socket_connect_timeout=3)
    token = f"{os.getpid()}:{uuid.uuid4().hex}"
    try:
        for db in _REDIS_TEST_DBS:
            if admin.set(f"predq-test-claim:{db}", token, nx=True, ex=_CLAIM_TTL_S):
                return admin, db, token
    except redis.RedisError as exc:
        admin.close()
        unavailable(f"Redis at {REDIS_SERVER_URL}", exc)
    admin.close()
    pytest.fail(f"every Redis test database {_REDIS_TEST_DBS} is claimed by another run")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database index of its own, flushed before and after the test."""
    admin, db, token = _claim_redis_db()
    url = f"{REDIS_SERVER_URL}/{db}"
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.flushdb()
        yield url
    finally:
        client.flushdb()
        client.close()
        key = f"predq-test-claim:{db}"
        if admin.get(key) == token.encode():
            admin.delete(key)
        admin.close()


@pytest.fixture(scope="session")
def vhost_reaper() -> Iterator[rabbit.VhostReaper]:
    reaper = rabbit.VhostReaper()
    yield reaper
    reaper.wait()


@pytest.fixture
def amqp_url(vhost_reaper: rabbit.VhostReaper) -> Iterator[str]:
    """A fresh RabbitMQ virtual host of this test's own, deleted afterwards (in the
    background: nothing of the next test touches it)."""
    import subprocess

    from kombu import Connection
    from kombu.exceptions import OperationalError

    try:
        vhost = rabbit.add_vhost()
    except (OSError, subprocess.SubprocessError) as exc:
        unavailable("RabbitMQ (rabbitmqctl add_vhost)", exc)
    url = rabbit.vhost_url(vhost)
    try:
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
        yield url
    except (OSError, OperationalError) as exc:
        unavailable(f"RabbitMQ at {rabbit.AMQP_SERVER_URL}", exc)
    finally:
        vhost_reaper.delete(vhost)


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest, redis_url: str) -> rabbit.Broker:
    """The same test on Redis and on RabbitMQ (with Redis as its result backend)."""
    if request.param == "redis":
        return rabbit.Broker("redis", redis_url, redis_url)
    url = str(request.getfixturevalue("amqp_url"))
    return rabbit.Broker("amqp", url, redis_url, vhost=url.rsplit("/", 1)[1])


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PREDQ_MODEL_DIR pointed at an empty temporary folder."""
    path = tmp_path / "models"
    path.mkdir()
    monkeypatch.setenv("PREDQ_MODEL_DIR", str(path))
    monkeypatch.delenv("PREDQ_SIGNING_KEY", raising=False)
    monkeypatch.delenv("PREDQ_ARTIFACT_CACHE_DIR", raising=False)
    return path
