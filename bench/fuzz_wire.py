"""Fuzz the wire: generated hostile messages through decode, validation and execution on a
real worker, with good requests in flight beside them (issue 19).

    python -m bench.fuzz_wire --pool prefork --seconds 600 [--seed 19] [--round 20]

Needs the local Postgres and Redis (a fresh database, dropped at the end; a Redis database
claimed like the tests claim theirs). Each round sends `--round` generated messages
(bench/fuzz_gen.py) and 3 good predictions, then waits until every message has ended:

- answered: a result for its task id, a value or an `{error}` (a clear error);
- refused by Celery: a FAILURE result Celery itself stored (unregistered task, bad eta...);
- parked: its task id in the Redis list `predq.dead`;
- without a usable task id: the queue and the unacked set drained.

A crash is: the worker process gone, "Unrecoverable error" in its log, a good request
without its prediction, a message not ended within the round's deadline (lost or looping)
or a queue that does not drain. A task that raised (a FAILURE result from the task itself)
is counted apart as "task exceptions" with its type. Each crash's case is written to
`--out` (JSON lines) for replay; after a crash the worker is restarted and the run goes on.
Not in CI: tests/integration/test_fuzz_wire_ci.py runs a ~30 s fixed-seed variant.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.fuzz_gen import GOOD_FEATURES, Case, Generator
from modelstore.defaults import DEAD_LETTER_QUEUE, DEFAULT_QUEUE
from tests.support import models
from tests.support.rawwire import publish
from tests.support.workerproc import WorkerProcess, client_app, worker_env

ROUND_DEADLINE_S = 90.0
CELERY_REFUSALS = ("NotRegistered", "InvalidTaskError", "ContentDisallowed", "DecodeError")


@dataclass
class Report:
    cases: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    families: Counter[str] = field(default_factory=Counter)
    task_exceptions: Counter[str] = field(default_factory=Counter)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    good: int = 0

    def summary(self) -> dict[str, Any]:
        return {"cases": self.cases, "good_requests": self.good,
                "outcomes": dict(self.outcomes), "families": dict(self.families),
                "task_exceptions": dict(self.task_exceptions),
                "crashes": len(self.crashes),
                "crash_kinds": dict(Counter(c["kind"] for c in self.crashes))}


class Fuzzer:
    def __init__(self, pg_url: str, redis_url: str, tmp: Path, pool: str,
                 concurrency: int) -> None:
        self.env = worker_env(pg_url, redis_url, tmp)
        self.app: Celery = client_app(self.env)
        self.redis = redis.Redis.from_url(redis_url)
        self.tmp, self.pool, self.concurrency = tmp, pool, concurrency
        self.worker: WorkerProcess | None = None
        self.restarts = 0
        self.log_offset = 0

    def start(self) -> None:
        name = f"fuzz{self.restarts}"
        self.worker = WorkerProcess(self.env, name, self.tmp / f"{name}.log",
                                    concurrency=self.concurrency, pool=self.pool).start()
        self.worker.wait_ready(self.app)
        self.log_offset = 0

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def send(self, case: Case) -> None:
        if case.raw_envelope is not None:
            self.redis.lpush(DEFAULT_QUEUE, case.raw_envelope)
            return
        publish(self.app, case.task, str(case.task_id), case.body, case.headers,
                content_type=case.content_type, content_encoding=case.content_encoding)

    def send_good(self, n: int) -> list[Any]:
        return [self.app.send_task("predq.predict", kwargs={"features": GOOD_FEATURES})
                for _ in range(n)]

    def outcome(self, case: Case, parked: set[str], parked_text: str) -> str | None:
        if case.task_id is None:
            return "no-task-id"
        if case.task_id in parked or case.task_id in parked_text:
            return "parked"
        meta = self.app.backend.get_task_meta(case.task_id)
        status = meta.get("status")
        if status == "REVOKED":
            return "revoked"
        if status == "PENDING" and case.headers.get("ignore_result"):
            return "no-result-asked" if self.drained() else None
        if status == "SUCCESS":
            result = meta.get("result")
            return "clear-error" if isinstance(result, dict) and "error" in result \
                else "answer"
        if status == "FAILURE":
            result = meta.get("result")
            kind = result.get("exc_type", "?") if isinstance(result, dict) \
                else f"{type(result).__name__}: {str(result)[:80]} ({case.task})"
            refused = kind.split(":")[0] in CELERY_REFUSALS
            return "refused-by-celery" if refused else f"exception:{kind}"
        return None

    def new_log(self) -> str:
        assert self.worker is not None
        text = self.worker.log_tail(50_000_000)
        fresh, self.log_offset = text[self.log_offset:], len(text)
        return fresh

    def drained(self) -> bool:
        return (self.redis.llen(DEFAULT_QUEUE) == 0 and self.redis.hlen("unacked") == 0
                and not any(self.redis.llen(k) for k in self.redis.keys(
                    f"{DEFAULT_QUEUE}:inflight:*")))

    def broker_state(self) -> dict[str, int]:
        keys = [DEFAULT_QUEUE, *(k.decode() for k in self.redis.keys(
            f"{DEFAULT_QUEUE}:inflight:*"))]
        state = {k: int(self.redis.llen(k)) for k in keys}
        state["unacked"] = int(self.redis.hlen("unacked"))
        return state

    def round(self, cases: list[Case], report: Report) -> None:
        good = self.send_good(2)
        for case in cases:
            self.send(case)
        good += self.send_good(1)
        deadline = time.monotonic() + ROUND_DEADLINE_S
        pending = {id(c): c for c in cases}
        while pending and time.monotonic() < deadline:
            entries = [json.loads(e) for e in self.redis.lrange(DEAD_LETTER_QUEUE, 0, -1)]
            parked = {e.get("task_id") for e in entries}
            parked_text = "\n".join(str(e.get("message")) for e in entries)
            for key, case in list(pending.items()):
                result = self.outcome(case, parked, parked_text)
                if result == "no-task-id" and not self.drained():
                    continue
                if result is not None:
                    report.outcomes[result.split(":")[0]] += 1
                    if result.startswith("exception:"):
                        report.task_exceptions[result.split(":", 1)[1]] += 1
                    del pending[key]
            if pending:
                time.sleep(0.3)
        self.check(cases, pending, good, report)

    def check(self, cases: list[Case], pending: dict[int, Case], good: list[Any],
              report: Report) -> None:
        crashed: list[tuple[str, Case | None]] = [("not-ended", c) for c in pending.values()]
        for g in good:
            try:
                value = g.get(timeout=max(1.0, ROUND_DEADLINE_S / 3))
                ok = isinstance(value, dict) and "prediction" in value
            except Exception:  # noqa: BLE001 - any failure of a good request is a finding
                ok = False
            report.good += 1
            if not ok:
                crashed.append(("good-request-failed", None))
        assert self.worker is not None and self.worker.proc is not None
        log = self.new_log()
        if self.worker.proc.poll() is not None:
            crashed.append(("worker-exited", None))
        if "Unrecoverable error" in log:
            crashed.append(("unrecoverable-error", None))
        if not crashed:
            return
        suspects = list(pending.values()) or cases
        for kind, case in crashed:
            mentions = [ln for ln in log.splitlines() if case and str(case.task_id) in ln][:5]
            report.crashes.append({"kind": kind, "case": case.describe() if case else None,
                                   "mentions": [m[:500] for m in mentions],
                                   "broker": self.broker_state(),
                                   "round": [c.describe() for c in suspects][:25],
                                   "log": log[-3000:]})
        self.restart()

    def restart(self) -> None:
        self.stop()
        for key in [DEFAULT_QUEUE, "unacked", "unacked_index",
                    *self.redis.keys(f"{DEFAULT_QUEUE}:inflight:*")]:
            self.redis.delete(key)
        self.restarts += 1
        self.start()


def run(pg_url: str, redis_url: str, tmp: Path, pool: str, seconds: float, seed: int,
        round_size: int = 20, concurrency: int | None = None) -> Report:
    """Fuzz one worker of `pool` for `seconds`; the report of what every message became."""
    models.register(pg_url, "v1")
    fuzzer = Fuzzer(pg_url, redis_url, tmp, pool,
                    concurrency or (2 if pool == "prefork" else 8))
    generator = Generator(seed)
    report = Report()
    fuzzer.start()
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            cases = [generator.case() for _ in range(round_size)]
            report.cases += len(cases)
            report.families.update(c.family.split(":")[0] for c in cases)
            fuzzer.round(cases, report)
    finally:
        fuzzer.stop()
    return report


def _claim_redis() -> tuple[str, Any]:
    """A Redis database no test run holds (the tests' SET NX claim in database 0)."""
    admin = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    for db in (d for d in range(2, 16) if d != 11):
        key = f"predq-test-claim:{db}"
        if admin.set(key, "fuzz_wire", nx=True, ex=7200):
            return f"redis://127.0.0.1:6379/{db}", lambda claimed=key: admin.delete(claimed)
    raise SystemExit("every Redis test database is claimed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", choices=["prefork", "threads"], default="prefork")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--round", type=int, default=20)
    parser.add_argument("--out", type=Path,
                        default=Path(tempfile.gettempdir()) / "fuzz_wire_crashes.jsonl")
    args = parser.parse_args(argv)
    from bench.store_bench import fresh_database

    redis_url, release = _claim_redis()
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        with fresh_database() as pg_url, tempfile.TemporaryDirectory() as tmp:
            started = time.monotonic()
            report = run(pg_url, redis_url, Path(tmp), args.pool, args.seconds, args.seed,
                         args.round)
            summary = report.summary()
            summary.update(pool=args.pool, seed=args.seed,
                           seconds=round(time.monotonic() - started, 1))
    finally:
        client.flushdb()
        release()
    with args.out.open("w") as out:
        for crash in report.crashes:
            out.write(json.dumps(crash) + "\n")
    print(json.dumps(summary, indent=2))
    return 1 if report.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
