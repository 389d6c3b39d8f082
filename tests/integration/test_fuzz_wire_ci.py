"""The wire fuzzer's short CI variant (issue 19): ~30 s per pool, fixed seed, so the
crashes it once found (deep values, malformed envelopes, odd headers) do not come back.
The long run is `python -m bench.fuzz_wire --seconds 600`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.fuzz_wire import run

pytestmark = pytest.mark.e2e

SEED = 1919
SECONDS = 30.0


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_fuzzed_messages_all_end_and_the_worker_lives(pg_url: str, redis_url: str,
                                                      tmp_path: Path, pool: str) -> None:
    report = run(pg_url, redis_url, tmp_path, pool, SECONDS, SEED, round_size=15)
    summary = report.summary()
    assert report.cases >= 15, summary
    assert report.crashes == [], json.dumps(report.crashes, indent=1)[:6000]
    assert report.good > 0
    assert summary["outcomes"].get("parked", 0) > 0  # the generator reaches the guard
