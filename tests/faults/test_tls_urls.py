"""Passwords and TLS in the URLs: Settings parses `rediss://` and `?sslmode=require`, every
printed form masks the password, the options reach libpq and redis-py, and a worker plus a
producer work end to end over TLS to a private redis-server (throwaway CA, requirepass)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelstore import ModelEvaluationDB
from modelstore.engine import redact_url
from modelstore.errors import PredqError
from modelstore.settings import Settings
from producer.client import PredqClient
from tests.conftest import unavailable
from tests.faults.redisproc import RedisServer
from tests.faults.report import ReportFn
from tests.faults.stack import fault_env
from tests.support import models
from tests.support.workerproc import WorkerProcess, client_app

pytestmark = [pytest.mark.faults]

PG_URL = "postgresql://predq:Pg%40ss%2Fw0rd@db.example.com:5432/predq?sslmode=require"
BROKER = "rediss://:R%40dis-pw@redis.example.com:6380/0?ssl_cert_reqs=required"
BACKEND = "rediss://:R%40dis-pw@redis.example.com:6380/1?ssl_cert_reqs=required"
SECRETS = ("Pg%40ss%2Fw0rd", "Pg@ss/w0rd", "R%40dis-pw", "R@dis-pw", "sk-unit-secret")


def test_settings_parse_and_mask_tls_urls(fault_report: ReportFn) -> None:
    settings = Settings.from_env({"DATABASE_URL": PG_URL, "PREDQ_BROKER_URL": BROKER,
                                  "PREDQ_RESULT_BACKEND": BACKEND,
                                  "PREDQ_SIGNING_KEY": "sk-unit-secret"})
    config = settings.celery_config()
    shown = [redact_url(PG_URL), redact_url(BROKER), redact_url(BACKEND), repr(settings),
             str(settings.describe())]
    leaked = [s for s in SECRETS if any(s in text for text in shown)]
    fault_report("TLS URLs in Settings: `postgresql://…?sslmode=require`, `rediss://…"
                 "?ssl_cert_reqs=required` (passwords with @ and /)",
                 "Settings.from_env and celery_config() keep scheme and query; redact_url, "
                 "repr(Settings) and Settings.describe() mask them",
                 f"{redact_url(PG_URL)}; {redact_url(BROKER)}; {len(leaked)} secrets shown")
    assert settings.database_url == PG_URL
    assert config["broker_url"] == BROKER and config["result_backend"] == BACKEND
    assert "sslmode=require" in redact_url(PG_URL) and "***" in redact_url(PG_URL)
    assert redact_url(BROKER).startswith("rediss://") and "***" in redact_url(BROKER)
    assert not leaked, leaked


def test_postgres_sslmode_reaches_libpq(pg_url: str, fault_report: ReportFn) -> None:
    """This server has ssl=off: sslmode=require must be refused (never silently plain
    text), sslmode=disable must connect; the password never shows in the error."""
    base = pg_url.replace("postgres@", "postgres:Pg%40ss%2Fw0rd@", 1)
    with ModelEvaluationDB(f"{base}?sslmode=disable", connect_timeout_s=3) as db:
        listed = db.list_models()
    with pytest.raises(PredqError) as refused:
        ModelEvaluationDB(f"{base}?sslmode=require", connect_timeout_s=3)
    message = f"{type(refused.value).__name__}: {refused.value}"
    libpq = message.rsplit(": ", 1)[-1]
    fault_report("`?sslmode=require` against a Postgres without TLS",
                 f"refused, never downgraded to plain text: {type(refused.value).__name__} "
                 f"ending in {libpq[:100]!r}",
                 f"sslmode=disable connected ({len(listed)} models); password shown: "
                 f"{any(s in message for s in SECRETS)}")
    assert "SSL" in message and not any(s in message for s in SECRETS)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-tls"), password="Tls@pw:s3cret",
                         tls=True)
    try:
        server.start()
    except (OSError, RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
        unavailable("private TLS redis-server", exc)
    try:
        yield server
    finally:
        server.stop()


def _round_trip(env: dict[str, str], tmp: Path, name: str) -> tuple[Any, str, str]:
    """Start a worker on `env`, predict once through PredqClient.
    Returns (the answer or the error, how the worker started, its log)."""
    worker = WorkerProcess(env, name, tmp / f"{name}.log")
    answer: Any
    try:
        worker.start()
        try:
            worker.wait_ready(client_app(env), timeout=30)
            started = "worker started"
        except (RuntimeError, TimeoutError):
            crash = [ln for ln in worker.log_tail(200_000).splitlines() if "Unrecoverable" in ln]
            line = (crash or ["?"])[0].split("] ", 1)[-1].replace("\\n", " ")
            started = f"worker died at start: {' '.join(line.split())}"
        with PredqClient(Settings.from_env(env)) as client:
            answer = client.predict(models.rows(1)[0], timeout=10)
    except Exception as exc:  # noqa: BLE001 - the measured outcome
        answer = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    finally:
        worker.stop()
    return answer, started, worker.log_tail(200_000)


def _said(answer: Any) -> str:
    if isinstance(answer, dict):
        return f"a prediction from {answer.get('model_version')}"
    return str(answer)


@pytest.mark.e2e
def test_rediss_end_to_end(pg_url: str, tls_redis: RedisServer, tmp_path: Path,
                           fault_report: ReportFn) -> None:
    """The README's form: rediss:// with ssl_cert_reqs=required (+ the CA to trust)."""
    models.register(pg_url, "v1")
    query = f"?ssl_cert_reqs=required&ssl_ca_certs={tls_redis.ca_file}"
    env = fault_env(pg_url, tls_redis.url(0, query), tmp_path,
                    PREDQ_RESULT_BACKEND=tls_redis.url(1, query))
    answer, started, log = _round_trip(env, tmp_path, "tls")
    fault_report("Worker and producer over TLS: `rediss://:<password>@…?ssl_cert_reqs="
                 "required` to a private TLS redis-server (throwaway CA, requirepass)",
                 f"{started}; PredqClient.predict answered with {_said(answer)}",
                 f"password in the worker log: {str(tls_redis.password) in log}")
    assert isinstance(answer, dict) and answer.get("model_version") == "v1", answer
    assert tls_redis.password is not None and tls_redis.password not in log


BARE_REDISS_BUG = (
    "a bare PREDQ_BROKER_URL=rediss://… (no ssl_cert_reqs) is accepted for the broker "
    "(create_app sets broker_use_ssl=CERT_REQUIRED) but PREDQ_RESULT_BACKEND defaults to the "
    "same URL and no redis_backend_use_ssl is set: Celery's Redis backend raises ValueError "
    "'A rediss:// URL must have parameter ssl_cert_reqs' - the worker dies at start "
    "('Unrecoverable error') and PredqClient.predict raises a raw ValueError")


@pytest.mark.e2e
def test_bare_rediss_broker_url(pg_url: str, tls_redis: RedisServer, tmp_path: Path,
                                fault_report: ReportFn,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    models.register(pg_url, "v1")
    env = fault_env(pg_url, tls_redis.url(0), tmp_path, SSL_CERT_FILE=str(tls_redis.ca_file))
    env.pop("PREDQ_RESULT_BACKEND")  # documented default: the broker URL
    # The client verifies the certificate too: it must trust the test CA like the worker.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_redis.ca_file))
    answer, started, _log = _round_trip(env, tmp_path, "tlsbare")
    fault_report("Bare `PREDQ_BROKER_URL=rediss://:<password>@host/0` (no ssl_cert_reqs), "
                 "result backend left to default to it",
                 f"{started[:160]}; PredqClient.predict: {_said(answer)[:140]}",
                 "both sides default to ssl_cert_reqs=required (certificates verified)")
    assert isinstance(answer, dict) and answer.get("model_version") == "v1", answer
