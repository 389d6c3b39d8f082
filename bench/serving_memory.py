"""Model memory bench: `python -m bench.serving_memory` (needs the local PostgreSQL and Redis).

One real worker process (`python -m celery -A workers worker`, threads pool) serves a ~33 MB
RandomForest pipeline (the serving bench's model), then is promoted through ten more
versions of it (distinct bytes, each fetched from Postgres and deserialized). After each
switch it answers predicts with the new version, and its resident memory (VmRSS) is read.
Reported: RSS after 1 promotion, after 10, and their ratio, for the bounded cache
(PREDQ_MODEL_CACHE_SIZE default) against an effectively unbounded one (the old behaviour)
measured in the same run. Redis: a test database claimed with SET NX, flushed before and
after; Postgres: a fresh database, dropped at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import joblib
import redis

from bench.store_bench import fresh_database
from modelstore import ModelEvaluationDB, defaults
from producer.sample import FEATURES, make_cars, train_pipeline
from tests.support.workerproc import client_app, running_workers, worker_env

REDIS_SERVER = os.environ.get("BENCH_REDIS_SERVER", "redis://127.0.0.1:6379")
CLAIMABLE_DBS = [db for db in range(2, 16) if db != 11]


def log(message: str) -> None:
    print(message, flush=True)


@contextmanager
def claimed_redis_db() -> Iterator[str]:
    """A Redis database no test run holds (the test suites' SET NX claim in db 0)."""
    admin = redis.Redis.from_url(f"{REDIS_SERVER}/0", socket_connect_timeout=3)
    token = f"{os.getpid()}:{uuid.uuid4().hex}"
    db = next((d for d in CLAIMABLE_DBS
               if admin.set(f"predq-test-claim:{d}", token, nx=True, ex=3600)), None)
    if db is None:
        raise SystemExit(f"every Redis database {CLAIMABLE_DBS} is claimed")
    url = f"{REDIS_SERVER}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        if admin.get(f"predq-test-claim:{db}") == token.encode():
            admin.delete(f"predq-test-claim:{db}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def variant(model: Any, tag: int) -> bytes:
    """The same trained pipeline with a tag: distinct bytes and sha256, same size."""
    model.predq_bench_tag = tag
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


def serve_until(app: Any, features: dict[str, Any], version: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = app.send_task("predq.predict", kwargs={"features": features}).get(timeout=60)
        if result.get("model_version") == version:
            for _ in range(20):  # serve a little with it
                app.send_task("predq.predict", kwargs={"features": features}).get(timeout=60)
            return
        time.sleep(0.1)
    raise RuntimeError(f"worker did not serve {version} within {timeout:.0f} s")


def one_round(model: Any, features: dict[str, Any], redis_url: str, tmp: Path,
              promotions: int, cache_size: int, tag: str) -> tuple[float, float]:
    (tmp / tag).mkdir(parents=True, exist_ok=True)
    with fresh_database() as url:
        env = worker_env(url, redis_url, tmp / tag, PREDQ_GENERATION_POLL="0.5",
                         PREDQ_WORKER_THREADS="8", PREDQ_MODEL_CACHE_SIZE=str(cache_size))
        app = client_app(env)
        blobs = [variant(model, i) for i in range(promotions + 1)]
        with ModelEvaluationDB(url) as db:
            db.store_model("mem-run-0", "mem-v0", "RandomForest", blobs[0], is_production=True)
        rss: list[float] = []
        with running_workers(env, tmp / tag, names=(f"mem-{tag}",), app=app,
                             pool=None) as workers:
            pid = workers[0].proc.pid  # type: ignore[union-attr]
            serve_until(app, features, "mem-v0")
            for i in range(1, promotions + 1):
                with ModelEvaluationDB(url) as db:
                    db.store_model(f"mem-run-{i}", f"mem-v{i}", "RandomForest", blobs[i],
                                   is_production=True)
                serve_until(app, features, f"mem-v{i}")
                rss.append(rss_mb(pid))
                log(f"    [{tag}] after promotion {i:2d}: RSS {rss[-1]:7.1f} MB")
        app.close()
    return rss[0], rss[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--promotions", type=int, default=10)
    parser.add_argument("--cars", type=int, default=20_000)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--depth", type=int, default=12)
    args = parser.parse_args()
    started = time.perf_counter()
    model = train_pipeline(make_cars(args.cars), args.trees, args.depth)
    features = {k: (v.item() if hasattr(v, "item") else v)
                for k, v in make_cars(1, seed=3)[list(FEATURES)].iloc[0].items()}
    size = len(variant(model, 0)) / 1e6
    log(f"model memory bench: {size:.1f} MB model ({args.trees} trees, depth {args.depth}), "
        f"trained in {time.perf_counter() - started:.0f} s; {args.promotions} promotions, "
        f"{args.rounds} rounds, load average {os.getloadavg()[0]:.2f}")
    ratios: dict[str, list[float]] = {"bounded": [], "unbounded": []}
    with claimed_redis_db() as redis_url, tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for tag, cache in (("bounded", defaults.MODEL_CACHE_SIZE),
                               ("unbounded", 10 * args.promotions)):
                first, last = one_round(model, features, redis_url, Path(tmp) / f"r{r}",
                                        args.promotions, cache, tag)
                ratios[tag].append(last / first)
                log(f"  round {r + 1} {tag:9s} (PREDQ_MODEL_CACHE_SIZE={cache}): RSS after 1 "
                    f"promotion {first:.0f} MB, after {args.promotions} {last:.0f} MB: "
                    f"{last / first:.2f}x")
    for tag, values in ratios.items():
        log(f"{tag:9s}: RSS after {args.promotions} / after 1 promotion: median "
            f"{statistics.median(values):.2f}x, rounds {min(values):.2f}x..{max(values):.2f}x")


if __name__ == "__main__":
    main()
