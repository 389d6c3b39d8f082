"""Secrets never leak: a worker runs with a Postgres password, a Redis password and a
signing key, through predictions, store_model, a tampered artifact and a database outage.
None of the secrets (raw or URL-encoded) may appear in the worker's log (at DEBUG), in any
task result or broadcast reply, in producer errors, in the spool, or anywhere in Redis."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import text

from modelstore import ModelEvaluationDB, artifacts
from modelstore.artifacts import serialize
from modelstore.errors import PredqError
from modelstore.settings import Settings
from producer.client import PredqClient
from tests.conftest import create_database, drop_database, unavailable
from tests.faults import artifact_cases as ac
from tests.faults.dbcheck import serving_replies, spooled_rows, wait_until
from tests.faults.redisproc import RedisServer
from tests.faults.report import ReportFn
from tests.faults.stack import fault_env
from tests.faults.tcpproxy import free_port, tcp_proxy
from tests.support import models
from tests.support.workerproc import WorkerProcess, client_app

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

PG_PORT = 5432


class Secrets:
    def __init__(self) -> None:
        self.role = f"predq_secret_{secrets.token_hex(4)}"
        self.db_password = f"Pg@{secrets.token_hex(6)}/s3cret"
        self.redis_password = f"Rd@{secrets.token_hex(6)}:s3cret"
        self.signing_key = f"sk-{secrets.token_hex(16)}"

    def needles(self) -> dict[str, str]:
        out = {"db password": self.db_password, "redis password": self.redis_password,
               "signing key": self.signing_key}
        out.update({f"{k} (URL-encoded)": quote(v, safe="") for k, v in list(out.items())
                    if quote(v, safe="") != v})
        return out

    def db_url(self, database: str, port: int) -> str:
        return (f"postgresql://{self.role}:{quote(self.db_password, safe='')}"
                f"@127.0.0.1:{port}/{database}")


@pytest.fixture
def role_db(pg_admin: Any) -> Iterator[tuple[Secrets, str]]:
    """A fresh database owned by a fresh password-protected role; both dropped after."""
    s = Secrets()
    url = create_database(pg_admin)
    name = url.rsplit("/", 1)[-1]
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{s.role}" LOGIN PASSWORD :pw'), {"pw": s.db_password})
        conn.execute(text(f'ALTER DATABASE "{name}" OWNER TO "{s.role}"'))
    try:
        yield s, name
    finally:
        drop_database(pg_admin, url)
        with pg_admin.connect() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{s.role}"'))


def _redis_dump(server: RedisServer) -> str:
    """Every key and value of every database of the private Redis, as text."""
    parts: list[str] = []
    for db in range(16):
        with server.client(db) as client:
            for key in client.scan_iter(count=1000):
                kind = client.type(key).decode()
                value: Any = {"string": client.get, "hash": client.hgetall,
                              "list": lambda k: client.lrange(k, 0, -1),
                              "set": client.smembers,
                              "zset": lambda k: client.zrange(k, 0, -1)}.get(
                                  kind, lambda k: b"")(key)
                parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def _exercise(app: Any, s: Secrets, url: str, proxy: Any, worker: WorkerProcess,
              tmp: Path) -> dict[str, Any]:
    """Predictions, store_model, a tampered artifact, a DB outage; everything answered."""
    seen: dict[str, Any] = {}
    feats = models.rows(3)
    blob = serialize(models.small_model())
    payload = base64.b64encode(blob).decode()
    seen["predict"] = app.send_task("predq.predict", kwargs={"features": feats[0]}).get(60)
    seen["batch"] = app.send_task("predq.predict_batch", kwargs={
        "rows": [feats[1], {**feats[2], "year": "x"}]}).get(60)
    # Workers with a signing key take only uploads signed by the key's holder.
    signature = artifacts.sign(artifacts.sha256_hex(blob), s.signing_key.encode())
    store = {"artifact_b64": payload, "model_type": "RandomForest", "version": "s-v2",
             "signature": signature}
    seen["store"] = app.send_task("predq.store_model", kwargs={**store, "run_id": "r1"}).get(60)
    seen["store_dup"] = app.send_task("predq.store_model",
                                      kwargs={**store, "run_id": "r2"}).get(60)
    # A tampered artifact: unsigned, forced into production by raw SQL.
    ac.store(url, "s-bad", serialize(models.small_model()), None)
    ac.force_pointer(url, "s-bad")
    wait_until(lambda: any("s-bad" in (r["error"] or "") for r in serving_replies(app)), 20)
    seen["serving_refused"] = app.control.broadcast("predq_serving", reply=True, timeout=1)
    with ModelEvaluationDB(url, signing_key=s.signing_key.encode()) as db:
        db.set_production_model("v1")
    # A database outage: predictions spool, store_model and backfill retry.
    proxy.cut()
    try:
        pending = [app.send_task("predq.predict", kwargs={"features": f}) for f in feats * 5]
        seen["outage_predict"] = [p.get(60) for p in pending]
        seen["spooled"] = spooled_rows(tmp / "spool")
        slow = app.send_task("predq.store_model", kwargs={**store, "run_id": "r3",
                                                          "version": "s-v3"})
        backfill = app.send_task("predq.backfill_actuals", kwargs={"actuals": [
            {"request_id": "nope", "actual_value": 1.0}]})
        wait_until(lambda: "Retry in" in worker.log_tail(20_000), 15)
        seen["serving_outage"] = app.control.broadcast("predq_serving", reply=True, timeout=1)
    finally:
        proxy.restore()
    seen["store_after_outage"] = slow.get(60)
    seen["backfill_after_outage"] = backfill.get(60)
    return seen


def _producer_errors(s: Secrets, database: str, server: RedisServer) -> list[str]:
    """What a producer and the store say when the broker or the database is unreachable."""
    messages = []
    dead = free_port()
    bad_broker = f"redis://:{quote(s.redis_password, safe='')}@127.0.0.1:{dead}/0"
    for settings in (Settings.from_env({"PREDQ_BROKER_URL": bad_broker,
                                        "DATABASE_URL": s.db_url(database, dead)}),):
        with PredqClient(settings) as client:
            try:
                client.predict(models.rows(1)[0], timeout=5)
            except PredqError as exc:
                messages.append(f"{type(exc).__name__}: {exc}")
        try:
            ModelEvaluationDB(settings.database_url, connect_timeout_s=2).list_models()
        except PredqError as exc:
            messages.append(f"{type(exc).__name__}: {exc}")
    return messages


def test_no_secret_in_logs_results_or_redis(role_db: tuple[Secrets, str], tmp_path: Path,
                                            fault_report: ReportFn) -> None:
    s, database = role_db
    server = RedisServer(tmp_path / "redis", password=s.redis_password)
    try:
        server.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        unavailable("private redis-server", exc)
    try:
        with tcp_proxy(PG_PORT) as proxy:
            url = s.db_url(database, proxy.port)
            broker = f"redis://:{quote(s.redis_password, safe='')}@127.0.0.1:{server.port}/0"
            with ModelEvaluationDB(url, signing_key=s.signing_key.encode()) as db:
                db.store_model("run-v1", "v1", "RandomForest",
                               serialize(models.small_model()), is_production=True,
                               describe=False)
            env = fault_env(url, broker, tmp_path, PREDQ_SIGNING_KEY=s.signing_key,
                            PREDQ_LOG_TASKS="1")
            app = client_app(env)
            worker = WorkerProcess(env, "secrets", tmp_path / "secrets.log",
                                   extra_args=("--loglevel", "DEBUG"))
            try:
                worker.start()
                worker.wait_ready(app)
                seen = _exercise(app, s, url, proxy, worker, tmp_path)
            finally:
                worker.stop()
                app.close()
        seen["producer_errors"] = _producer_errors(s, database, server)
        log = worker.log_path.read_text(errors="replace")
        results = json.dumps(seen, default=str)
        spool = "".join(p.read_text(errors="replace") for p in (tmp_path / "spool").glob("*"))
        stores = {"worker log (DEBUG)": log, "task results and broadcast replies": results,
                  "Redis keyspace": _redis_dump(server), "spool files": spool}
    finally:
        server.stop()
    leaks = [f"{name} in {where}" for where, blob in stores.items()
             for name, needle in s.needles().items() if needle in blob]
    fault_report(
        "Secrets: Postgres password and Redis password (with @ / : in them) in the URLs, "
        "PREDQ_SIGNING_KEY set; predictions, store_model, a tampered artifact, a DB outage, "
        "producer errors",
        f"searched {len(s.needles())} secret forms in the DEBUG worker log "
        f"({len(log) // 1024:,} KiB), every task result and broadcast reply, producer "
        "errors, the spool and the whole Redis keyspace",
        f"{len(leaks)} leaks{': ' + '; '.join(leaks) if leaks else ''}")

    assert not leaks, leaks
    assert "prediction" in seen["predict"] and seen["store"].get("sha256"), seen
    assert "already stored" in seen["store_dup"].get("error", ""), seen["store_dup"]
    assert "s-bad" in json.dumps(seen["serving_refused"]), seen["serving_refused"]
    assert seen["spooled"] > 0 and all("prediction" in r for r in seen["outage_predict"])
    assert seen["store_after_outage"].get("model_version") == "s-v3", seen
    assert "nope" in seen["backfill_after_outage"].get("unknown", []), seen
    assert len(seen["producer_errors"]) == 2 and "***" in seen["producer_errors"][0]
    assert "Retry in" in log and "refusing" in log
