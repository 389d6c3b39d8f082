"""A spooled (then replayed) row and a direct write made at the same moment get the same
prediction_time, also when the server's time zone is not UTC (issue 12, item 5). Both
the small-batch (VALUES) and the large-batch (COPY) paths; real Postgres."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from modelstore.db import ModelEvaluationDB
from modelstore.engine import dispose_engines
from tests.support.db import fetch
from workers.spool import Spool

ZONE = "Asia/Kolkata"  # +05:30, no daylight saving: a wrong stamp is off by 5.5 hours


def rows(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"request_id": f"{prefix}-{i}", "model_version": "v1",
             "input_features": {"year": 2018}, "predicted_value": 1.0} for i in range(n)]


@pytest.fixture
def zoned_url(pg_url: str) -> str:
    with ModelEvaluationDB(pg_url):
        pass  # create the schema
    dispose_engines()
    name = pg_url.rsplit("/", 1)[1].split("?")[0]
    conn = psycopg2.connect(pg_url.replace("postgresql+psycopg2://", "postgresql://"))
    conn.autocommit = True
    conn.cursor().execute(f"ALTER DATABASE \"{name}\" SET timezone TO '{ZONE}'")
    conn.close()
    return pg_url


@pytest.mark.parametrize("n", [3, 250])  # VALUES insert; COPY through the stage table
def test_spooled_and_direct_rows_agree_on_a_non_utc_server(zoned_url: str, tmp_path: Path,
                                                           n: int) -> None:
    assert fetch(zoned_url, "SHOW timezone") == [(ZONE,)]
    spool = Spool(tmp_path)
    spool.append(rows("spooled", n))  # stamped now, as during an outage
    with ModelEvaluationDB(zoned_url) as db:
        db.store_predictions(rows("direct", n))  # CURRENT_TIMESTAMP, the server's clock
        assert spool.replay(db.store_predictions) == n
    times: dict[str, list[datetime]] = {"spooled": [], "direct": []}
    for rid, when in fetch(zoned_url, "SELECT request_id, prediction_time "
                                      "FROM model_predictions"):
        times[rid.split("-")[0]].append(when)
    assert len(times["spooled"]) == len(times["direct"]) == n
    gap = abs((max(times["spooled"]) - max(times["direct"])).total_seconds())
    assert gap < 120, f"spooled and direct times differ by {gap:.0f} s"
