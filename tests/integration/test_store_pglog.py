"""The prediction log's own Postgres connections: reused across writes, and a write stuck
on the server is cut off by abort_stalled_writes (DatabaseUnavailable), after which the
next write goes through on a fresh connection."""

from __future__ import annotations

import threading
from typing import Any

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from modelstore import ModelEvaluationDB, pglog
from modelstore.errors import DatabaseUnavailable, StoreError
from tests.support.db import fetch


def _rows(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"request_id": f"{prefix}-{i}", "model_version": "v1",
             "input_features": {"year": 2020}, "predicted_value": float(i)} for i in range(n)]


def _backends(url: str) -> set[int]:
    return {r[0] for r in fetch(url, "SELECT pid FROM pg_stat_activity WHERE datname = "
                                     "current_database() AND pid <> pg_backend_pid()")}


def test_writes_reuse_one_connection(pg_url: str) -> None:
    db = ModelEvaluationDB(pg_url)
    db.store_predictions(_rows("a", 3))
    before = _backends(pg_url)
    for i in range(5):
        db.store_predictions(_rows(f"b{i}", 2))
    assert _backends(pg_url) == before
    assert fetch(pg_url, "SELECT count(*) FROM model_predictions")[0][0] == 13


def test_a_write_blocked_on_the_server_is_cut_off_and_the_next_one_succeeds(
        pg_url: str) -> None:
    db = ModelEvaluationDB(pg_url)
    db.store_predictions(_rows("warm", 1))
    blocker = psycopg2.connect(make_url(pg_url).set(drivername="postgresql")
                               .render_as_string(hide_password=False))
    outcome: dict[str, BaseException | int] = {}
    try:
        with blocker.cursor() as cur:  # holds the lock until rollback: the write waits
            cur.execute("LOCK TABLE model_predictions IN ACCESS EXCLUSIVE MODE")

        def write() -> None:
            try:
                outcome["done"] = db.store_predictions(_rows("stuck", 1))
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome["done"] = exc

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(0.5)
        assert writer.is_alive(), "the write should be waiting for the table lock"
        assert db.abort_stalled_writes(0.2) == 1
        writer.join(10)
        assert not writer.is_alive(), "the cut-off write is still blocked"
    finally:
        blocker.rollback()
        blocker.close()
    assert isinstance(outcome["done"], DatabaseUnavailable), outcome
    assert "logging predictions" in str(outcome["done"])
    assert db.abort_stalled_writes(0.0) == 0  # nothing in flight any more
    assert db.store_predictions(_rows("after", 2)) == 2
    ids = {r[0] for r in fetch(pg_url, "SELECT request_id FROM model_predictions")}
    # The server may still finish the cut-off INSERT once the lock is gone: the worker
    # spools such rows too, and the replay's request_id dedup keeps one copy.
    assert ids - {"stuck-0"} == {"warm-0", "after-0", "after-1"}


@pytest.mark.parametrize("size", [3, 250], ids=["values", "copy"])
def test_a_write_the_database_refuses_leaves_later_writes_working(pg_url: str,
                                                                  size: int) -> None:
    db = ModelEvaluationDB(pg_url)
    rows = _rows("x", size)
    rows[-1]["input_features"] = "{not json"  # taken as JSON text: only Postgres refuses it
    with pytest.raises(StoreError, match="logging predictions"):
        db.store_predictions(rows)
    assert db.store_predictions(_rows("y", size)) == size
    assert fetch(pg_url, "SELECT count(*) FROM model_predictions")[0][0] == size


@pytest.mark.parametrize("size", [3, 250], ids=["values", "copy"])
def test_text_format_special_characters_round_trip(pg_url: str, size: int) -> None:
    db = ModelEvaluationDB(pg_url)
    odd = ["tab\there", "new\nline", "back\\slash", "\\N", "cr\rx", "plain"]
    rows = _rows("s", size)
    for i, row in enumerate(rows):
        row["request_id"] = f"{odd[i % len(odd)]}-{i}"
        row["model_version"] = odd[i % len(odd)]
        row["input_features"] = {"note": odd[i % len(odd)], "q": 'say "hi"'}
    assert db.store_predictions(rows) == size
    got = {r[0]: (r[1], r[2]) for r in fetch(
        pg_url, "SELECT request_id, model_version, input_features FROM model_predictions")}
    assert got == {r["request_id"]: (r["model_version"], r["input_features"]) for r in rows}


def test_after_a_server_restart_one_write_fails_and_the_next_reconnects(pg_url: str) -> None:
    db = ModelEvaluationDB(pg_url)
    log = pglog.log_connections(db.engine)
    with log._connection(), log._connection():  # two idle connections afterwards
        pass
    fetch(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                  "current_database() AND pid <> pg_backend_pid()")
    with pytest.raises(DatabaseUnavailable, match="logging predictions"):
        db.store_predictions(_rows("lost", 1))  # the worker spools these rows
    assert db.store_predictions(_rows("back", 2)) == 2  # not the other dead idle one


def test_an_old_connection_is_recycled_at_checkout(pg_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    db = ModelEvaluationDB(pg_url)
    db.store_predictions(_rows("a", 1))
    before = _backends(pg_url)
    monkeypatch.setattr(pglog, "RECYCLE_S", 0.0)
    db.store_predictions(_rows("b", 1))
    after = _backends(pg_url)
    assert after - before, "no new connection was opened for the old one"
