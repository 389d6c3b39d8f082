"""Spool replay classification (issue 12, item 4), on a real Postgres: an outage is
retried; a row the store refuses goes to the dead-letter file with its reason (counted,
shown in the serving status); a schema mismatch stops replay with one clear error and a
metric; a large chunk on a slow server is not cut off by the serving write deadline."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from modelstore.db import ModelEvaluationDB
from modelstore.engine import dispose_engines
from tests.support.db import fetch
from workers import metrics
from workers import writer as writer_mod
from workers.spool import Spool
from workers.writer import PredictionWriter


def rows(prefix: str, n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"request_id": f"{prefix}-{i}", "model_name": "cars", "model_version": "v1",
             "input_features": {"year": 2018, "brand": "Kia"}, "predicted_value": 1000.0 + i,
             **extra} for i in range(n)]


def sql(url: str, statement: str) -> None:
    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
    conn.autocommit = True
    try:
        conn.cursor().execute(statement)
    finally:
        conn.close()


def make_writer(url: str, spool_dir: Path, deadline_s: float = 10.0) -> PredictionWriter:
    with ModelEvaluationDB(url):
        pass  # the schema exists before the test changes it
    return PredictionWriter(lambda: ModelEvaluationDB(url), Spool(spool_dir),
                            write_deadline_s=deadline_s)


def counter(name: str) -> float:
    return metrics.get_metrics().registry.get_sample_value(name) or 0.0


def test_refused_rows_are_dead_lettered_and_the_rest_replayed(pg_url: str,
                                                              tmp_path: Path) -> None:
    w = make_writer(pg_url, tmp_path)
    sql(pg_url, "ALTER TABLE model_predictions ADD CONSTRAINT sane_price "
                "CHECK (predicted_value < 1e9)")
    # Spooled by an older worker: one row the store refuses in each way.
    w.spool.append(rows("ok", 250) + rows("huge", 1, predicted_value=5e9)
                   + rows("long", 1, model_version="v" * 80) + rows("ok2", 3))
    before = counter("predq_spool_dead_letter_rows_total")
    assert w.replay_once() == 255
    assert w.spool.pending_rows() == 0 and w.replay_error is None
    logged = {r for (r,) in fetch(pg_url, "SELECT request_id FROM model_predictions")}
    assert len(logged) == 253 and "huge-0" not in logged and "long-0" not in logged
    letters = [json.loads(line) for line in w.dead_letters.path.read_text().splitlines()]
    by_id = {d["row"]["request_id"]: d["reason"] for d in letters}
    assert set(by_id) == {"huge-0", "long-0"}
    assert "sane_price" in by_id["huge-0"]
    assert "rows[0].model_version" in by_id["long-0"]
    assert w.dead_letters.rows == 2
    assert counter("predq_spool_dead_letter_rows_total") == before + 2
    assert w.replay_once() == 0  # nothing left: no retry loop
    w.close()


def test_a_schema_mismatch_stops_replay_with_one_error_and_a_metric(
        pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    w = make_writer(pg_url, tmp_path)
    w.spool.append(rows("s", 5))
    sql(pg_url, "ALTER TABLE model_predictions DROP COLUMN model_sha256")
    monkeypatch.setattr(writer_mod, "BLOCKED_RETRY_S", 0.0)
    with caplog.at_level(logging.ERROR, logger="workers.writer"):
        for _ in range(3):
            assert w.replay_once() == 0
    stopped = [r for r in caplog.records if "spool replay STOPPED" in r.getMessage()]
    assert len(stopped) == 1, "one clear error, not one per attempt"
    assert "model_sha256" in stopped[0].getMessage()
    assert w.replay_error is not None and w.spool.pending_rows() == 5
    assert metrics.get_metrics().registry.get_sample_value("predq_spool_replay_blocked") == 1
    assert not w.dead_letters.path.exists()  # the rows are fine: none dead-lettered
    sql(pg_url, "ALTER TABLE model_predictions ADD COLUMN model_sha256 VARCHAR(64)")
    dispose_engines()
    assert w.replay_once() == 5 and w.replay_error is None
    assert metrics.get_metrics().registry.get_sample_value("predq_spool_replay_blocked") == 0
    w.close()


def test_an_older_schema_version_stops_replay(pg_url: str, tmp_path: Path) -> None:
    w = make_writer(pg_url, tmp_path)
    w.spool.append(rows("v", 2))
    sql(pg_url, "UPDATE predq_schema SET version = 0")
    dispose_engines()
    w._db = None
    assert w.replay_once() == 0
    assert w.replay_error is not None and "predq db upgrade" in w.replay_error
    w.close()


@pytest.mark.parametrize("per_row_s", [writer_mod.defaults.REPLAY_DEADLINE_PER_ROW_S, 0.0])
def test_a_large_chunk_on_a_slow_server_is_not_cut_off(pg_url: str, tmp_path: Path,
                                                       per_row_s: float,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each insert statement takes 2 s (a slow server); the serving deadline is 1 s. A
    300-row replay chunk gets 1 s + 300 x 10 ms and completes; with no per-row allowance
    (per_row_s=0, the old behaviour) the watchdog cuts it off every time."""
    w = make_writer(pg_url, tmp_path, deadline_s=1.0)
    w._watchdog.start()  # the watchdog only: this test drives replay itself
    sql(pg_url, "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$")
    sql(pg_url, "CREATE TRIGGER slow AFTER INSERT ON model_predictions "
                "FOR EACH STATEMENT EXECUTE FUNCTION slow()")
    monkeypatch.setattr(writer_mod.defaults, "REPLAY_DEADLINE_PER_ROW_S", per_row_s)
    w.spool.append(rows("slow", 300))
    started = time.monotonic()
    replayed = w.replay_once()
    if per_row_s:
        assert replayed == 300 and w.spool.pending_rows() == 0
        assert time.monotonic() - started >= 2.0
    else:
        assert replayed == 0 and w.spool.pending_rows() == 300
    w._stop.set()
    w._watchdog.join(5)
    w.spool.close()
