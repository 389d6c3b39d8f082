"""Reading what the fault tests check: the prediction log, spool files, worker replies."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url


@contextmanager
def engine_for(url: str) -> Iterator[Engine]:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    engine = create_engine(parsed, connect_args={"connect_timeout": 5})
    try:
        yield engine
    finally:
        engine.dispose()


def via_port(url: str, port: int) -> str:
    """The same database URL through another port (the fault proxy)."""
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def query(url: str, sql: str, **params: object) -> list[Any]:
    with engine_for(url) as engine, engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def id_counts(url: str) -> dict[str, int]:
    """request_id -> number of rows in model_predictions."""
    rows = query(url, "SELECT request_id, count(*) FROM model_predictions GROUP BY request_id")
    return {str(r[0]): int(r[1]) for r in rows}


def total_rows(url: str) -> int:
    return int(query(url, "SELECT count(*) FROM model_predictions")[0][0])


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def spooled_rows(spool_dir: Path) -> int:
    """Complete JSON lines in all spool segments (what `Spool.pending_rows` counts)."""
    total = 0
    for path in spool_dir.glob("seg-*.jsonl"):
        try:
            total += path.read_bytes().count(b"\n")
        except FileNotFoundError:
            continue
    return total


def serving_replies(app: Any, timeout: float = 1.0, nodes: int | None = 1
                    ) -> list[dict[str, Any]]:
    """predq_serving replies flattened: one dict per serving process and model. Returns
    once `nodes` nodes answered (None: wait the whole timeout for any number)."""
    out: list[dict[str, Any]] = []
    replies = app.control.broadcast("predq_serving", reply=True, timeout=timeout, limit=nodes)
    for reply in replies or []:
        for node, body in reply.items():
            for proc in body.get("processes", []):
                for model, status in proc.get("models", {}).items():
                    out.append({"node": node, "pid": proc.get("pid"), "model": model,
                                "spooled_rows": proc.get("spooled_rows"), **status})
    return out
