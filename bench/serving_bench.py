"""Serving benchmark: `python -m bench.serving_bench` (needs the local PostgreSQL and Redis;
`--broker amqp://...` runs it on RabbitMQ, see bench/serving_amqp.py).

In one run, on a fresh Postgres database (dropped at the end) and a dedicated Redis
database (flushed at start and end), with a ~33 MB RandomForest pipeline as production:
  1. the no-op baseline: `predq.ping` through the same broker, backend and workers
     (2 nodes, --pool threads, the predict run's concurrency), one producer process,
     results stored and fire-and-forget;
  2. single-row `predq.predict` until the rows are in Postgres, both modes (>= 0.7x of 1);
  3. the naive design (bench/naive_app.py: prefork -c 2, INSERT + COMMIT per row over a
     persistent connection) with results stored (predq >= 3x);
  4. `predq.predict_batch`, 1,000 rows/task, against 2 processes doing DataFrame +
     predict + COPY in-process: row dicts (>= 0.85x), columnar (>= 0.95x), each also
     with return_results=false (columnar >= 1.0x); `--batches-only` runs just this;
  5. low-load latency of sequential single-row predicts (p50 <= 15 ms, p99 <= 30 ms);
  6. promote -> every process of both nodes serving the new version (<= 1 s, 3 trials).
Prints every figure with its baseline and ratio, then a summary; the default run writes
the summary into the Serving section of bench/README.md. Every rate is a ratio measured
in the same run: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import redis

from bench import naive_app
from bench.serving_amqp import AmqpBroker, bench_broker, rabbitmq_pid
from bench.serving_batches import run_batches
from bench.serving_cpu import CpuMeter, describe, with_children
from bench.serving_load import (
    BackgroundLoad,
    Broker,
    RowCounter,
    Run,
    feature_rows,
    send_collect,
    send_forget,
    sequential_latency,
    single_calls,
)
from bench.serving_promote import promote_trials
from bench.serving_report import (
    batch_rows,
    jsonable,
    readme_block,
    summarize,
    text_table,
    update_readme,
    where_time_goes,
)
from bench.store_bench import fresh_database
from modelstore import ModelEvaluationDB, artifacts, defaults
from modelstore.engine import get_engine
from producer.sample import FEATURES, make_cars, train_pipeline
from tests.support.workerproc import WorkerProcess, client_app, running_workers, worker_env

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
NODES = ("bench1", "bench2")
V2_OFFSET = 100_000.0


@dataclass(frozen=True)
class Config:
    cars: int = 20_000
    trees: int = 100
    depth: int = 12
    tasks: int = 3_000
    rounds: int = 5
    naive_tasks: int = 600
    batch_tasks: int = 120
    batch_rows: int = 1_000
    batch_rounds: int = 5
    latency_calls: int = 300
    trials: int = 3
    background_rate: float = 40.0
    concurrency: int = defaults.WORKER_THREADS
    conventional: bool = False  # workers as the bare `celery -A workers worker`
    batches_only: bool = False  # only [4]: the predict_batch payload shapes

    @classmethod
    def quick(cls) -> Config:
        return cls(cars=2_000, trees=10, depth=6, tasks=300, rounds=1, naive_tasks=100,
                   batch_tasks=6, batch_rounds=1, latency_calls=50)


def log(message: str) -> None:
    print(message, flush=True)


def show(run: Run, unit: str, baseline: Run | None = None) -> None:
    ratio = f"  {run.rate / baseline.rate:5.2f}x {baseline.label}" if baseline else ""
    extra = ""
    if run.errors or run.missing_rows:
        extra = f"  ERRORS {run.errors}, rows missing {run.missing_rows}"
    log(f"    {run.label:34s} {run.items:6,d} in {run.seconds:6.2f} s = "
        f"{run.rate:8,.0f} {unit}/s{ratio}{extra}")


class Bench:
    def __init__(self, cfg: Config, url: str, tmp: Path, logs: Path,
                 broker_url: str = REDIS_URL) -> None:
        self.cfg = cfg
        self.url = url
        self.tmp = tmp
        self.logs = logs
        self.env = worker_env(url, broker_url, tmp, PREDQ_RESULT_BACKEND=REDIS_URL,
                              PREDQ_GENERATION_POLL=str(defaults.GENERATION_POLL_S),
                              PREDQ_WORKER_THREADS=str(cfg.concurrency))
        self.app = client_app(self.env)
        amqp = broker_url.startswith("amqp")
        self.broker: Broker | AmqpBroker = AmqpBroker(broker_url) if amqp else Broker(REDIS_URL)
        self.rows = RowCounter(get_engine(url))
        self.feats = feature_rows(5_000, seed=11)
        self.runs: dict[str, list[Run]] = {}
        self.extra: dict[str, Any] = {"batch_sizes": {}}
        self.worker_pids: list[int] = []
        self.worker_names = NODES
        redis_pid = int(redis.Redis.from_url(REDIS_URL).info("server")["process_id"])
        self.meter = CpuMeter({
            "producer": lambda: [os.getpid()],
            "workers": lambda: with_children(self.worker_pids),
            "postgres": self.rows.backends,
            "redis": lambda: [redis_pid],
            **({"rabbitmq": lambda: [rabbitmq_pid()]} if amqp else {}),
        })

    def fresh_app(self, task: str = "predq.ping", queue: str | None = None,
                  **kwargs: Any) -> None:
        """A new client app before each run that collects results. Celery's Redis result
        consumer leaves the pub/sub messages of results it read by key unread, and the
        next blocking get() drains that backlog first (1.4 s per ~3,000 results here):
        without this, one run's leftovers would be charged to the next run."""
        self.app.close()
        self.app = client_app(self.env)
        self.app.send_task(task, kwargs=kwargs, queue=queue).get(timeout=60)

    def record(self, key: str, run: Run) -> Run:
        self.runs.setdefault(key, []).append(run)
        return run

    def median_rate(self, key: str) -> float:
        return statistics.median(r.rate for r in self.runs[key])

    def measured(self, key: str, go: Callable[..., Run], *args: Any, **kwargs: Any) -> Run:
        """Run `go(*args, **kwargs)` under the CPU meter and record it under `key`."""
        self.meter.start()
        run = go(*args, **kwargs)
        run.cpu = self.meter.stop()
        return self.record(key, run)

    def show(self, run: Run, unit: str, baseline: Run | None = None,
             prefix: str | None = None) -> None:
        show(run, unit, baseline)
        if run.cpu:
            log(f"      {describe(run.cpu, run.items, run.seconds, unit[:-1] or unit)}")
        if prefix is not None:
            sizes = self.rows.batch_sizes(prefix)
            self.extra["batch_sizes"][prefix] = sizes
            if sizes:
                log(f"      writes: {len(sizes):,} transactions, mean {statistics.mean(sizes):.1f}"
                    f" rows, median {statistics.median(sizes):.0f}, max {max(sizes)}")

    # -- setup ----------------------------------------------------------------------------

    def register_models(self) -> None:
        cfg = self.cfg
        started = time.perf_counter()
        cars = make_cars(cfg.cars)
        model = train_pipeline(cars, cfg.trees, cfg.depth)
        v1 = artifacts.serialize(model)
        # v2 = v1 shifted by V2_OFFSET: a logged value says which version computed it.
        values = model.predict(pd.DataFrame(self.feats)[list(FEATURES)])
        assert values.max() < values.min() + V2_OFFSET
        self.v2_threshold = float(values.max() + values.min() + V2_OFFSET) / 2
        v2 = artifacts.serialize(train_pipeline(cars, cfg.trees, cfg.depth, offset=V2_OFFSET))
        self.model_file = self.tmp / "v1.joblib"
        self.model_file.write_bytes(v1)
        with ModelEvaluationDB(self.url) as db:
            db.store_model("bench-run-v1", "bench-v1", "RandomForest", v1, is_production=True)
            db.store_model("bench-run-v2", "bench-v2", "RandomForest", v2)
        self.extra["model_mb"] = round(len(v1) / 1e6, 1)
        log(f"  models: 2 x {len(v1) / 1e6:.1f} MB ({cfg.trees} trees, depth {cfg.depth}, "
            f"{cfg.cars:,} cars), trained and registered in "
            f"{time.perf_counter() - started:.1f} s; bench-v1 is production")

    # -- phases ---------------------------------------------------------------------------

    def naive(self) -> None:
        cfg = self.cfg
        env = dict(self.env, NAIVE_MODEL_PATH=str(self.model_file))
        worker = WorkerProcess(env, "naive", self.logs / "naive.log")
        worker.args = [sys.executable, "-m", "celery", "-A", "bench.naive_app", "worker",
                       "--pool", "prefork", "-c", "2", "-Q", naive_app.QUEUE, "-n", "naive@%h",
                       "--loglevel", "WARNING", "--without-gossip", "--without-mingle"]
        log("\n[3] naive design: bench.naive_app, --pool prefork -c 2, results stored")
        try:
            worker.start()
            worker.wait_ready(self.app)
            assert worker.proc is not None
            self.worker_pids = [worker.proc.pid]

            def calls(prefix: str, n: int) -> list[dict[str, Any]]:
                return [dict(kw, model_version="bench-v1")
                        for kw in single_calls(self.feats, n, prefix)]

            send_collect(self.app, naive_app.TASK, calls("nw-", 40), "warm-up",
                         queue=naive_app.QUEUE)
            self.fresh_app(naive_app.TASK, naive_app.QUEUE, **calls("nw2-", 1)[0])
            run = self.measured("naive", send_collect, self.app, naive_app.TASK,
                                calls("nv-", cfg.naive_tasks), "naive predict (1 row/task)",
                                rows=(self.rows, "nv-"), queue=naive_app.QUEUE)
            self.show(run, "rows")
        finally:
            worker.stop()
            self.worker_pids = []

    def warm_up(self) -> None:
        send_collect(self.app, "predq.ping", [{}] * 200, "warm-up")
        send_collect(self.app, "predq.predict", single_calls(self.feats, 400, "w-"), "warm-up")
        send_collect(self.app, "predq.predict_batch", self.batch_calls("wb-", 2, 500, 99),
                     "warm-up", items_per_call=500)
        self.broker.wait_idle()

    def single_rows(self) -> None:
        cfg = self.cfg
        log(f"\n[1,2] single-row tasks: {cfg.tasks:,} per run, {cfg.rounds} round(s), "
            "one producer process")
        for r in range(1, cfg.rounds + 1):
            log(f"  round {r}:")
            order = ["ping", "predict"] if r % 2 else ["predict", "ping"]
            for mode in ("stored", "ff"):
                for kind in order:
                    self.broker.wait_idle()
                    self.one_burst(kind, mode, r)
                ping, pred = self.runs[f"ping-{mode}"][-1], self.runs[f"predict-{mode}"][-1]
                self.show(ping, "tasks")
                self.show(pred, "rows", ping, prefix=f"p{mode[0]}{r}-")

    def one_burst(self, kind: str, mode: str, r: int) -> None:
        n = self.cfg.tasks
        prefix = f"p{mode[0]}{r}-"
        if kind == "ping":
            calls: list[dict[str, Any]] = [{}] * n
            task, rows, label = "predq.ping", None, "no-op predq.ping"
        else:
            calls = single_calls(self.feats, n, prefix)
            task, rows, label = "predq.predict", (self.rows, prefix), "predq.predict (1 row)"
        label += ", stored" if mode == "stored" else ", fire-and-forget"
        if mode == "stored":
            self.fresh_app()
            self.measured(f"{kind}-{mode}", send_collect, self.app, task, calls, label,
                          rows=rows, broker=self.broker)
        else:
            self.measured(f"{kind}-{mode}", send_forget, self.app, task, calls, label,
                          self.broker, rows=rows)

    def latency(self) -> None:
        n = self.cfg.latency_calls
        log(f"\n[5] low-load latency: {n} sequential single-row calls, one at a time")
        self.broker.wait_idle()
        self.fresh_app()
        time.sleep(0.5)
        ping = sequential_latency(self.app, [{}] * n, task="predq.ping")
        self.fresh_app()
        pred = sequential_latency(self.app, single_calls(self.feats, n, "lat-"))
        self.extra["latency"] = {"ping": ping, "predict": pred}
        for label, lat in (("no-op predq.ping", ping), ("predq.predict (1 row)", pred)):
            log(f"    {label:34s} p50 {lat.p50:6.2f} ms  p99 {lat.p99:6.2f} ms  "
                f"max {max(lat.samples_ms):7.1f} ms  errors {lat.errors}")
            slow = [(ms, tid) for ms, tid in lat.slowest() if ms > 100]
            if slow:
                log("      slow calls: " + ", ".join(f"{ms:.0f} ms (task {tid})"
                                                   for ms, tid in slow))

    def batch_calls(self, prefix: str, tasks: int, size: int, seed: int
                    ) -> list[dict[str, Any]]:
        rows = feature_rows(tasks * size, seed=seed)
        return [{"rows": rows[t * size:(t + 1) * size],
                 "request_ids": [f"{prefix}{t}:{i}" for i in range(size)]}
                for t in range(tasks)]

    def batches(self) -> None:
        run_batches(self, str(self.model_file), naive_app.libpq_dsn(self.url), log)

    def promote(self) -> None:
        cfg = self.cfg
        log(f"\n[6] promote -> every process of {len(NODES)} nodes serving the new version, "
            f"{cfg.trials} trials, background load {cfg.background_rate:.0f} predicts/s")
        self.broker.wait_idle()
        with BackgroundLoad(lambda: client_app(self.env), self.feats, "bg-",
                            cfg.background_rate) as bg:
            time.sleep(1.0)
            trials = promote_trials(self.app, self.url, [f"{n}@" for n in NODES],
                                    ["bench-v2", "bench-v1"], cfg.trials, log)
            time.sleep(0.5)
        self.broker.wait_idle()
        _, logged = self.rows.wait_for("bg-", bg.sent, timeout=30)
        wrong = self.rows.version_mismatches("bg-", "bench-v2", self.v2_threshold)
        self.extra["promote"] = trials
        self.extra["background"] = {"sent": bg.sent, "logged": logged, "wrong_version": wrong}
        log(f"    background predicts: {bg.sent} sent, {logged} logged, {wrong} logged with a "
            f"version other than the model that computed them")

    def predq(self) -> None:
        cfg = self.cfg
        how = "(no pool flag) PREDQ_WORKER_THREADS=" if cfg.conventional else (
            "--pool threads --concurrency ")
        log(f"\npredq workers: {len(NODES)} nodes x {how}{cfg.concurrency}")
        started = time.perf_counter()
        with running_workers(self.env, self.logs, names=NODES, app=self.app,
                             concurrency=cfg.concurrency,
                             pool=None if cfg.conventional else "threads") as workers:
            self.worker_pids = [w.proc.pid for w in workers if w.proc]
            self.warm_up()
            log(f"  started and warmed up in {time.perf_counter() - started:.1f} s "
                f"(pids {self.worker_pids}; logs in {self.logs})")
            try:
                if self.cfg.batches_only:
                    self.batches()
                    return
                self.single_rows()
                self.latency()
                self.batches()
                self.promote()
            finally:
                self.worker_pids = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small model, few tasks; README untouched")
    parser.add_argument("--tasks", type=int, help="single-row tasks per run (default 3000)")
    parser.add_argument("--rounds", type=int, help="rounds of the single-row runs (default 5)")
    parser.add_argument("--concurrency", type=int,
                        help=f"threads per worker node (default {defaults.WORKER_THREADS})")
    parser.add_argument("--conventional", action="store_true",
                        help="start predq's workers with the bare `celery -A workers worker` "
                             "(no --pool/--concurrency: the app's own config decides)")
    parser.add_argument("--broker", default=REDIS_URL,
                        help="broker URL; amqp://user:pass@host:5672 runs in a fresh vhost "
                        "(Redis stays the result backend); README untouched")
    parser.add_argument("--batches-only", action="store_true",
                        help="only the predict_batch payload shapes against the ceiling "
                             "(README untouched)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--logs", type=Path, help="keep the worker logs in this directory")
    parser.add_argument("--no-readme", action="store_true",
                        help="do not write the summary into bench/README.md")
    args = parser.parse_args()
    cfg = Config.quick() if args.quick else Config()
    overrides = {k: v for k, v in (("tasks", args.tasks), ("rounds", args.rounds),
                                   ("concurrency", args.concurrency),
                                   ("conventional", args.conventional or None),
                                   ("batches_only", args.batches_only or None)) if v is not None}
    cfg = Config(**{**asdict(cfg), **overrides})
    command = " ".join(["python -m bench.serving_bench", *sys.argv[1:]])
    amqp = args.broker.startswith("amqp")
    log(f"serving bench: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"broker {args.broker.split('@')[-1]}, results {REDIS_URL}")
    started = time.perf_counter()
    flush = redis.Redis.from_url(REDIS_URL)
    flush.flushdb()
    try:
        with fresh_database() as url, tempfile.TemporaryDirectory() as tmp, \
                bench_broker(args.broker) as broker:
            logs = args.logs or Path(tmp)
            logs.mkdir(parents=True, exist_ok=True)
            bench = Bench(cfg, url, Path(tmp), logs, broker)
            bench.register_models()
            if not cfg.batches_only:
                bench.naive()
            bench.predq()
    finally:
        flush.flushdb()
        flush.close()
    elapsed = time.perf_counter() - started
    if cfg.batches_only:
        log(f"\nSummary ({elapsed:.0f} s in all):\n")
        log(text_table(batch_rows(bench)))
        log("\n" + where_time_goes(bench))
        return
    rows = summarize(bench)
    where = where_time_goes(bench)
    log(f"\nSummary ({elapsed:.0f} s in all):\n")
    log(text_table(rows))
    log("\n" + where)
    today = dt.date.today().isoformat()
    if args.json:
        args.json.write_text(json.dumps({
            "command": command, "date": today, "config": asdict(cfg), "elapsed_s": elapsed,
            "summary": [r.as_dict() for r in rows],
            "runs": {k: [dict(asdict(r), rate=r.rate) for r in v]
                     for k, v in bench.runs.items()},
            "extra": jsonable(bench.extra)}, indent=2))
    if not args.quick and not args.no_readme and not amqp:
        update_readme(readme_block(command, today, bench, rows, where))
        log("\nwrote the summary into bench/README.md (Serving section)")


if __name__ == "__main__":
    main()
