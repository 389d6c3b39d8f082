"""The prediction log at volume: `python -m bench.log_bench` (needs the local PostgreSQL;
not in CI). The issue's full size: `--rows 50000000 --days 30` (about 12 GB of disk and
tens of minutes on 2 cores); the default is what fits a loaded 2-core machine.

In one run, on fresh databases (dropped at the end), it prints:
  * the writer's rows/s (1,000-row batches of realistic rows, as a worker writes them)
    into the partitioned log with its rollup triggers, against the predq 1 writer (COPY
    into the plain predq 1 table with its four b-trees), interleaved rounds;
    and the same batches as "loose" rows (no request_time: the dedup window probe);
  * `prediction_stats()` (rollups) against the full-scan aggregate it replaced, both on
    `--rows` rows over `--days` days, and whether their figures agree;
  * the time to drop one day's partition (`predq db prune`);
  * the time to backfill 10,000 actuals by request_id at 1M rows and at `--rows` rows,
    both spread over the same `--days` days (the same partitions);
  * `predq db upgrade` of a predq 1 log of `--upgrade-rows` rows: seconds per million.
TEST_DATABASE_URL overrides the server URL.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.store_bench import fresh_database, realistic_rows
from modelstore import ModelEvaluationDB, migrate, partitions, pglog, predictions
from modelstore.engine import get_engine

LEGACY_DDL = Path(__file__).resolve().parents[1] / "sql" / "legacy_schema_v1.sql"
VERSIONS = ("v1", "v2", "v3", "v4")
START = datetime(2026, 1, 1)
FILL = """
INSERT INTO model_predictions (request_id, model_name, model_version, model_sha256,
    input_features, predicted_value, actual_value, confidence_score, prediction_time)
SELECT 'f-' || i, 'default', (ARRAY['v1','v2','v3','v4'])[1 + i %% 4], 'ab12',
    jsonb_build_object('year', 2000 + i %% 24, 'mileage', (i %% 100000)::float8,
                       'brand', 'b' || (i %% 30), 'engine_size', 1.0 + (i %% 30) / 10.0),
    (i %% 5000)::float8, CASE WHEN i %% 2 = 0 THEN (i %% 4900)::float8 END, 0.9,
    %(start)s::timestamp + (i - %(lo)s) * %(step)s * interval '1 second'
FROM generate_series(%(lo)s, %(hi)s - 1) AS i
"""
SCAN = """
SELECT model_name, model_version, count(*), count(actual_value),
       avg(abs(predicted_value - actual_value)), avg((predicted_value - actual_value) ^ 2),
       min(prediction_time), max(prediction_time)
FROM model_predictions GROUP BY model_name, model_version
"""


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _summary(values: list[float]) -> str:
    return (f"median {statistics.median(values):,.0f} (rounds {min(values):,.0f} .. "
            f"{max(values):,.0f})")


def _stamp(batches: list[list[dict[str, Any]]], loose: bool) -> list[list[dict[str, Any]]]:
    now = predictions.utc_now()
    return [[dict(r, request_id=f"{r['request_id']}-{int(loose)}", prediction_time=now,
                  loose_time=loose) for r in batch] for batch in batches]


def _old_writer(url: str) -> Callable[[list[dict[str, Any]]], None]:
    """predq 1's fast path: COPY into its plain table in a savepoint, one commit a batch."""
    raw = get_engine(url, check_schema=False).raw_connection()
    columns = pglog.COLUMNS[:-2]  # predq 1 had no role; prediction_time was the default

    def write(batch: list[dict[str, Any]]) -> None:
        tuples = predictions.row_tuples(batch)
        buffer: io.StringIO = pglog._copy_text(t[:len(columns)] for t in tuples)
        with raw.cursor() as cur:
            cur.execute("SAVEPOINT s")
            cur.copy_expert(f"COPY model_predictions ({', '.join(columns)}) FROM STDIN", buffer)
            cur.execute("RELEASE SAVEPOINT s")
        raw.commit()

    return write


def writer_rates(part_url: str, plain_url: str, batches: int, rounds: int) -> None:
    db = ModelEvaluationDB(part_url)
    partitions.ensure_ahead(db.engine, "day", 1)
    old = _old_writer(plain_url)
    rates: dict[str, list[float]] = {"partitioned": [], "partitioned, loose": [], "plain": []}
    for n in range(rounds):
        rows = realistic_rows(1000 * batches, seed=n)
        chunks = [rows[i:i + 1000] for i in range(0, len(rows), 1000)]
        variants: dict[str, list[list[dict[str, Any]]]] = {
            "partitioned": _stamp(chunks, False), "partitioned, loose": _stamp(chunks, True),
            "plain": chunks}
        for name, stamped in variants.items():
            write = old if name == "plain" else db.store_predictions
            rates[name].append(len(rows) / _timed(lambda: [write(b) for b in stamped]))  # noqa: B023
    base = statistics.median(rates["plain"])
    print(f"writer, {rounds} rounds x {batches} batches x 1,000 realistic rows (rows/s):")
    for name, values in rates.items():
        print(f"  {name:22s} {_summary(values)}  {statistics.median(values) / base:.2f}x plain")


def fill(url: str, lo: int, hi: int, days: int) -> float:
    """Rows lo..hi of the synthetic log, spread evenly over `days` days from START (so a
    small log and a large one have the same partitions); returns seconds."""
    engine = get_engine(url)
    step = days * 86400.0 / (hi - lo)
    started = time.perf_counter()
    with engine.begin() as conn:
        partitions.create_range(conn, START, START + timedelta(days=days), "day")
    for a in range(lo, hi, 500_000):
        b = min(hi, a + 500_000)
        with engine.begin() as conn:
            conn.exec_driver_sql(FILL, {"start": START + timedelta(seconds=(a - lo) * step),
                                        "lo": a, "hi": b, "step": step})
    return time.perf_counter() - started


def backfill_rate(db: ModelEvaluationDB, size: int, rng: random.Random) -> float:
    actuals = {f"f-{rng.randrange(size)}": rng.random() for _ in range(10_000)}
    seconds = _timed(lambda: db.backfill_actuals(actuals))
    return len(actuals) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--writer-batches", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--upgrade-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    rng = random.Random(1)
    per_day = args.rows // args.days
    with fresh_database() as part_url, fresh_database() as plain_url:
        with get_engine(plain_url, check_schema=False).begin() as conn:
            conn.exec_driver_sql(LEGACY_DDL.read_text())
        writer_rates(part_url, plain_url, args.writer_batches, args.rounds)

        db = ModelEvaluationDB(part_url)
        small = min(1_000_000, args.rows)
        print(f"\nfill to {small:,} rows over {args.days} days: "
              f"{fill(part_url, 0, small, args.days):.1f} s")
        small_rate = statistics.median(backfill_rate(db, small, rng) for _ in range(3))
        seconds = fill(part_url, small, args.rows, args.days)
        print(f"fill to {args.rows:,} rows over {args.days} days: +{seconds:.1f} s")
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE model_predictions")
        large_rate = statistics.median(backfill_rate(db, args.rows, rng) for _ in range(3))
        print(f"backfill of 10,000 actuals by request_id: {small_rate:,.0f}/s at {small:,} "
              f"rows, {large_rate:,.0f}/s at {args.rows:,} rows "
              f"({small_rate / large_rate:.2f}x slower at the larger size; goal <= 2x)")

        stats_s = [_timed(db.prediction_stats) for _ in range(args.rounds)]
        with db.engine.connect() as conn:
            scan_s = [_timed(lambda: conn.exec_driver_sql(SCAN).all())
                      for _ in range(max(1, args.rounds - 1))]
            scan = {(r[0], r[1]): (r[2], r[3]) for r in conn.exec_driver_sql(SCAN).all()}
        got = {(r["model_name"], r["model_version"]): (r["predictions"], r["labelled"])
               for r in db.prediction_stats()}
        print(f"prediction_stats(): {statistics.median(stats_s) * 1000:.1f} ms (rounds "
              f"{min(stats_s) * 1000:.1f} .. {max(stats_s) * 1000:.1f}); full scan "
              f"{statistics.median(scan_s):.2f} s: "
              f"{statistics.median(scan_s) / statistics.median(stats_s):,.0f}x faster; "
              f"counts equal: {got == scan}")

        with db.engine.connect() as conn:
            oldest = partitions.list_partitions(conn)[0]
            (rows_in,) = conn.exec_driver_sql(
                f"SELECT count(*) FROM {oldest.name}").one()
        age = timedelta(days=1)
        before = got
        seconds = _timed(lambda: partitions.prune(db.engine, age, "day", now=oldest.end + age))
        after = {(r["model_name"], r["model_version"]): (r["predictions"], r["labelled"])
                 for r in db.prediction_stats()}
        print(f"drop of one day's partition ({rows_in:,} rows): {seconds * 1000:.0f} ms; "
              f"stats unchanged: {after == before}")

        with get_engine(plain_url, check_schema=False).begin() as conn:
            conn.exec_driver_sql("TRUNCATE model_predictions")
            conn.exec_driver_sql(FILL, {"start": START, "lo": 0, "hi": args.upgrade_rows,
                                        "step": 86400.0 / per_day})
        seconds = _timed(lambda: migrate.upgrade(plain_url))
        print(f"predq db upgrade of a predq 1 log of {args.upgrade_rows:,} rows: {seconds:.1f} s "
              f"({seconds / args.upgrade_rows * 1e6:.1f} s per million rows)")


if __name__ == "__main__":
    main()
