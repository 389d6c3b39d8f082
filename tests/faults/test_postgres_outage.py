"""Invariant 4: Postgres unreachable for 20+ s while single-row and batch predictions flow.

Workers reach Postgres through a TCP proxy the test cuts (connections reset, new ones
refused) and restores; the shared server itself stays up for everyone else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.faults.dbcheck import (
    id_counts,
    query,
    serving_replies,
    spooled_rows,
    via_port,
    wait_until,
)
from tests.faults.report import ReportFn
from tests.faults.stack import fault_env
from tests.faults.tcpproxy import TcpProxy, tcp_proxy
from tests.faults.traffic import Tally, Traffic
from tests.support import models
from tests.support.workerproc import WorkerProcess, client_app

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

OUTAGE_S = 22.0
KILL_OUTAGE_S = 3.0
PG_PORT = 5432


def _phase_spread(tally: Tally, start: float, end: float) -> tuple[int, int]:
    """Results that arrived in the first and in the last third of a window."""
    third = (end - start) / 3
    early = sum(start <= t < start + third for t in tally.arrivals)
    late = sum(end - third <= t <= end for t in tally.arrivals)
    return early, late


def _wait_logged(url: str, ids: set[str], spool: Path, timeout: float) -> dict[str, int]:
    counts: dict[str, int] = {}

    def done() -> bool:
        nonlocal counts
        counts = id_counts(url)
        return ids <= set(counts) and spooled_rows(spool) == 0

    wait_until(done, timeout, interval=0.5)
    return counts


@dataclass
class Outage:
    """What the 22 s outage measured."""

    before: Tally
    during: Tally
    after: Tally
    seconds: float
    early: int
    late: int
    spooled: int
    reported: list[dict[str, Any]]
    restored_utc: datetime
    replay_s: float
    counts: dict[str, int]

    @property
    def ok(self) -> dict[str, str]:
        return {**self.before.ok, **self.during.ok, **self.after.ok}


def _long_outage(proxy: TcpProxy, traffic: Traffic, url: str, spool: Path) -> Outage:
    before = traffic.run("pre", 2.0)
    cut_at = time.monotonic()
    proxy.cut()
    try:
        during = traffic.run("out", OUTAGE_S)
        spooled = spooled_rows(spool)
        reported = serving_replies(traffic.app)
    finally:
        proxy.restore()
    restored_at = time.monotonic()
    restored_utc = datetime.now(UTC).replace(tzinfo=None)
    after = traffic.run("post", 2.0)
    ids = set(before.ok) | set(during.ok) | set(after.ok)
    counts = _wait_logged(url, ids, spool, timeout=60)
    early, late = _phase_spread(during, cut_at, restored_at)
    return Outage(before, during, after, restored_at - cut_at, early, late, spooled, reported,
                  restored_utc, time.monotonic() - restored_at, counts)


def _kill_with_spool(proxy: TcpProxy, traffic: Traffic, victim: WorkerProcess,
                     spool: Path) -> tuple[Tally, int]:
    """Cut Postgres, let rows pile up in the spool, SIGKILL the worker, restore."""
    proxy.cut()
    try:
        doomed = traffic.run("kill", KILL_OUTAGE_S)
        pending = spooled_rows(spool)
        victim.kill()
    finally:
        proxy.restore()
    return doomed, pending


def test_postgres_outage_serves_spools_replays_and_survives_sigkill(
        pg_url: str, redis_db: str, tmp_path: Path, fault_report: ReportFn) -> None:
    models.register(pg_url, "v1")
    spool = tmp_path / "spool"
    with tcp_proxy(PG_PORT) as proxy:
        env = fault_env(via_port(pg_url, proxy.port), redis_db, tmp_path,
                        PREDQ_VISIBILITY_TIMEOUT="10")
        app = client_app(env)
        traffic = Traffic(app)
        first = WorkerProcess(env, "pgout", tmp_path / "pgout.log")
        second = WorkerProcess(env, "pgreplay", tmp_path / "pgreplay.log")
        try:
            first.start()
            first.wait_ready(app)
            outage = _long_outage(proxy, traffic, pg_url, spool)
            doomed, pending_at_kill = _kill_with_spool(proxy, traffic, first, spool)
            logged_before_restart = set(doomed.ok) & set(id_counts(pg_url))
            second.start()
            second.wait_ready(app)
            final = _wait_logged(pg_url, set(doomed.ok), spool, timeout=60)
        finally:
            first.stop()
            second.stop()

    every = {**outage.ok, **doomed.ok}
    missing = sorted(set(every) - set(final))
    dupes = {rid: n for rid, n in final.items() if n != 1}
    stray = set(final) - set(every)
    spool_times = query(pg_url, "SELECT max(prediction_time) FROM model_predictions "
                                "WHERE request_id LIKE 'out-%'")[0][0]
    fault_report(
        f"Postgres unreachable {outage.seconds:.0f} s (proxy cut: connections reset, new "
        "ones refused) under single-row + batch load",
        "predictions kept coming from the cached model; rows the log could not take were "
        "fsynced to the spool and replayed after recovery",
        f"{outage.during.served:,} predictions served during the outage ({outage.early:,} in "
        f"its first third, {outage.late:,} in its last), {outage.spooled:,} rows spooled, "
        f"replayed within {outage.replay_s:.0f} s; {len(outage.ok):,} requests in all: "
        f"{len(set(outage.ok) - set(final))} lost, "
        f"{sum(final.get(r, 0) > 1 for r in outage.ok)} duplicated")
    fault_report(
        "Worker SIGKILLed with rows in its spool (Postgres cut again), fresh worker started "
        "on the same spool dir",
        "the next worker replayed the dead worker's spool segments",
        f"{pending_at_kill:,} rows in the spool at the kill, {len(logged_before_restart)} of "
        f"them in Postgres before the restart; after it {len(set(doomed.ok) - set(missing)):,} "
        f"of {len(doomed.ok):,}: {len(set(doomed.ok) & set(missing))} lost, "
        f"{sum(final.get(r, 0) > 1 for r in doomed.ok)} duplicated")

    tallies = (outage.before, outage.during, outage.after, doomed)
    assert not any(t.errors for t in tallies), [t.errors for t in tallies if t.errors]
    assert set(every.values()) == {"v1"}
    assert outage.during.served > 0 and outage.early > 0 and outage.late > 0, (
        "served throughout the outage")
    assert outage.spooled >= outage.during.served, "rows served in the outage were spooled"
    assert any(r["spooled_rows"] and r["model_version"] == "v1" for r in outage.reported)
    assert set(outage.ok) <= set(outage.counts), "outage-1 requests logged after recovery"
    assert pending_at_kill >= doomed.served > 0
    assert not logged_before_restart, "outage-2 rows existed only in the killed worker's spool"
    assert not missing, f"lost {len(missing)}: {missing[:10]}"
    assert not dupes, f"duplicated: {list(dupes.items())[:10]}"
    assert not stray, f"rows nobody asked for: {sorted(stray)[:10]}"
    assert spooled_rows(spool) == 0
    assert spool_times is not None and spool_times <= outage.restored_utc, (
        "a replayed row keeps the time it was predicted, not the replay's")


STALL_S = 15.0
SILENT_BUG = (
    "a silent partition (Postgres stops answering, no reset) hangs the prediction writer on "
    "its pooled connection: pool_pre_ping / the COPY wait on a socket with no client-side "
    "timeout (only connect_timeout is set; keepalives_idle=30 with the kernel's default "
    "interval/count, no tcp_user_timeout), so no prediction is answered and nothing is "
    "spooled until the link heals or TCP gives up (minutes)")


def test_postgres_silently_unreachable_keeps_serving(pg_url: str, redis_db: str,
                                                     tmp_path: Path,
                                                     fault_report: ReportFn) -> None:
    models.register(pg_url, "v1")
    with tcp_proxy(PG_PORT) as proxy:
        env = fault_env(via_port(pg_url, proxy.port), redis_db, tmp_path)
        app = client_app(env)
        worker = WorkerProcess(env, "pgstall", tmp_path / "pgstall.log")
        try:
            worker.start()
            worker.wait_ready(app)
            Traffic(app).run("warm", 1.0)  # pooled connections in use
            proxy.stall()
            try:
                sent: list[tuple[str, Any]] = []
                deadline = time.monotonic() + STALL_S
                while time.monotonic() < deadline:
                    rid = f"stall-{len(sent)}"
                    sent.append((rid, app.send_task("predq.predict", kwargs={
                        "features": models.rows(1)[0], "request_id": rid})))
                    time.sleep(0.2)
                answered = sum(r.ready() for _, r in sent)
                spooled = spooled_rows(tmp_path / "spool")
            finally:
                proxy.stall(False)
            healed = time.monotonic()
            results = [r.get(timeout=120) for _, r in sent]
            after_heal = time.monotonic() - healed
            counts = _wait_logged(pg_url, {rid for rid, _ in sent}, tmp_path / "spool", 60)
        finally:
            worker.stop()
    fault_report(
        f"Postgres silently unreachable {STALL_S:.0f} s (link stalls: no reset, no refusal)",
        f"{answered} of {len(sent)} single-row predictions answered during the partition; "
        f"{spooled} rows spooled; the rest answered {after_heal:.1f} s after the link healed",
        f"{sum(counts.get(rid) == 1 for rid, _ in sent)} of {len(sent)} logged exactly once "
        "after healing; all served by v1: "
        f"{all(r.get('model_version') == 'v1' for r in results)}")
    assert answered > 0, "predictions kept coming while the database was silent"
