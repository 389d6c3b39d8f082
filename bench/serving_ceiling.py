"""The in-process ceiling for `predq.predict_batch`: N processes (one per core), each doing
DataFrame-from-dict-rows + `model.predict` + COPY into a plain table with the same
columns, for the same rows and batch size. No broker, no validation, no dedup."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import time
from collections.abc import Sequence
from typing import Any

PLAIN_TABLE = "bench_ceiling_predictions"
PLAIN_DDL = f"""
CREATE TABLE IF NOT EXISTS {PLAIN_TABLE} (
    request_id VARCHAR(128), model_name VARCHAR(100), model_version VARCHAR(50),
    model_sha256 VARCHAR(64), input_features JSONB, predicted_value FLOAT8,
    confidence_score FLOAT8, actual_value FLOAT8,
    prediction_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP)
"""
COPY_SQL = (f"COPY {PLAIN_TABLE} (request_id, model_name, model_version, model_sha256, "
            "input_features, predicted_value, confidence_score) FROM STDIN WITH (FORMAT csv)")


def _child(model_path: str, dsn: str, batches: list[list[dict[str, Any]]], prefix: str,
           version: str, barrier: Any, out: Any) -> None:
    import joblib
    import pandas as pd
    import psycopg2

    from producer.sample import FEATURES

    model = joblib.load(model_path)
    columns = list(FEATURES)
    conn = psycopg2.connect(dsn)
    model.predict(pd.DataFrame(batches[0][:10], columns=columns))  # warm-up, untimed
    barrier.wait()
    started = time.time()
    for b, rows in enumerate(batches):
        frame = pd.DataFrame(rows, columns=columns)
        values = model.predict(frame)
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(
            (f"{prefix}{b}:{i}", "default", version, "", json.dumps(row), float(v), None)
            for i, (row, v) in enumerate(zip(rows, values, strict=True)))
        buffer.seek(0)
        with conn.cursor() as cur:
            cur.copy_expert(COPY_SQL, buffer)
        conn.commit()
    out.put((started, time.time(), sum(len(r) for r in batches)))
    conn.close()


def ceiling(model_path: str, dsn: str, batches: Sequence[list[dict[str, Any]]],
            processes: int, version: str, label: str) -> tuple[float, float, int]:
    """(seconds, rows/s, rows) over `processes` spawned processes sharing the batches."""
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(PLAIN_DDL)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    shares = [list(batches[i::processes]) for i in range(processes)]
    procs = [ctx.Process(target=_child, args=(model_path, dsn, share, f"{label}-p{i}-",
                                              version, barrier, out), daemon=True)
             for i, share in enumerate(shares)]
    for p in procs:
        p.start()
    try:
        spans = [out.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    seconds = max(s[1] for s in spans) - min(s[0] for s in spans)
    rows = sum(s[2] for s in spans)
    return seconds, rows / seconds, rows
