"""How long a dead or cut-off worker's tasks take to run elsewhere (issue 18), on Redis with
predq's default settings (PREDQ_OWNER_TTL 20 s, sweep every 10 s, visibility timeout 1 h).

    .venv/bin/python -m bench.takeover_bench                 # SIGKILL, 5 rounds
    .venv/bin/python -m bench.takeover_bench --partition     # link cut (root: ip netns)

Each round: a victim worker whose predict is slow (so it holds tasks it has not finished)
and a survivor worker; ROWS single-row tasks are sent; once the survivor has logged all it
can, the victim is SIGKILLed (or its host's link to the broker cut, the host living in a
network namespace). Recovery = kill/cut -> the last request logged. Printed per round, with
min/median/max, against the documented bound (TTL + sweep interval) and against what
kombu's visibility timeout alone gives (the default: 3,600 s).

Uses a private redis-server and a fresh Postgres database per run (dropped at the end).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.store_bench import fresh_database
from modelstore import defaults
from tests.faults.redisproc import RedisServer
from tests.support.models import rows
from tests.support.netns import VethNamespace, VethRedis, veth_namespace
from tests.support.sleepy import SLEEPY_CALLS_ENV, SLEEPY_SECONDS_ENV, marks, register_sleepy
from tests.support.workerproc import WorkerProcess, client_app, worker_env

ROWS = 300
VICTIM_PREDICT_S = 100
"""Long enough to be held at the kill, short of the batcher's 120 s wait for queued rows."""
SETTLE_S = 2.0
"""The survivor is done with its share once the log stops growing for this long."""
PG_SOCKET_DIR = "/var/run/postgresql"


def log(message: str) -> None:
    print(message, flush=True)


def logged(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(DISTINCT request_id) FROM model_predictions")).scalar_one())
    finally:
        engine.dispose()


def wait_until_still(url: str, timeout: float = 120.0) -> int:
    """The logged count once it stopped growing for SETTLE_S."""
    deadline = time.monotonic() + timeout
    last, since = logged(url), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = logged(url)
        if now != last:
            last, since = now, time.monotonic()
        elif last and time.monotonic() - since >= SETTLE_S:
            return last
    raise TimeoutError(f"the log kept growing for {timeout} s")


def over_unix_socket(url: str) -> str:
    return make_url(url).set(host=None, port=None, query={"host": PG_SOCKET_DIR}
                             ).render_as_string(hide_password=False)


@contextmanager
def broker(partition: bool, workdir: Path) -> Iterator[tuple[str, str, VethNamespace | None]]:
    """(URL for the survivor and producer, URL for the victim, the victim's namespace)."""
    with ExitStack() as stack:
        if not partition:
            server = stack.enter_context(_started(RedisServer(workdir)))
            yield server.url(0), server.url(0), None
            return
        ns = stack.enter_context(veth_namespace())
        veth = stack.enter_context(_started(VethRedis(workdir, ns.host_ip)))
        yield veth.url(0), veth.link_url(0), ns


@contextmanager
def _started(server: RedisServer) -> Iterator[RedisServer]:
    try:
        yield server.start()
    finally:
        server.stop()


def one_round(db_url: str, partition: bool, workdir: Path) -> tuple[float, int]:
    """Seconds from the kill (cut) to the last request logged; tasks the victim held."""
    calls = workdir / "calls.log"
    with broker(partition, workdir / "redis") as (here_url, victim_url, ns):
        here_env = worker_env(db_url, here_url, workdir / "survivor")
        victim_env = worker_env(db_url, victim_url, workdir / "victim",
                                **{SLEEPY_CALLS_ENV: str(calls),
                                   SLEEPY_SECONDS_ENV: str(VICTIM_PREDICT_S)})
        app = client_app(here_env)
        survivor = WorkerProcess(here_env, "survivor", workdir / "survivor.log")
        victim = WorkerProcess(victim_env, "victim", workdir / "victim.log")
        if ns is not None:
            victim.args = [*ns.exec_prefix(), *victim.args]
        try:
            for w in (victim, survivor):
                w.start()
            for w in (victim, survivor):
                w.wait_ready(app)
            for i, features in enumerate(rows(ROWS)):
                app.send_task("predq.predict", ignore_result=True,
                              kwargs={"features": features, "request_id": f"t-{i}"})
            before = wait_until_still(db_url)
            if ns is not None:
                ns.cut()
            else:
                victim.kill()
            start = time.monotonic()
            while logged(db_url) < ROWS:
                if time.monotonic() - start > 300:
                    raise TimeoutError("not recovered in 300 s")
                time.sleep(0.1)
            took = time.monotonic() - start
        finally:
            if ns is not None:
                ns.heal()
            victim.kill()
            survivor.stop()
        held = ROWS - before
        assert marks(calls, "start"), "the victim held no task"
        return took, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--partition", action="store_true",
                        help="cut the victim host's broker link instead of SIGKILL (root)")
    args = parser.parse_args()
    bound = defaults.OWNER_TTL_S + defaults.SWEEP_INTERVAL_S
    what = "link cut" if args.partition else "SIGKILL"
    log(f"takeover after {what}: {ROWS} single-row tasks per round, victim predict "
        f"{VICTIM_PREDICT_S} s; bound TTL {defaults.OWNER_TTL_S} s + sweep "
        f"{defaults.SWEEP_INTERVAL_S} s = {bound} s")
    times: list[float] = []
    with fresh_database() as url:
        db_url = over_unix_socket(url) if args.partition else url
        for n in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="predq-takeover-") as tmp:
                if n:
                    with create_engine(url).begin() as conn:
                        conn.execute(text("TRUNCATE model_predictions"))
                else:
                    register_sleepy(url, "v1", seconds=0)
                took, held = one_round(db_url, args.partition, Path(tmp))
            times.append(took)
            log(f"round {n + 1}: {took:6.1f} s ({took / bound:.2f}x the bound), "
                f"{held} task(s) taken over")
    log(f"recovery after {what} over {len(times)} rounds: min {min(times):.1f} s, median "
        f"{statistics.median(times):.1f} s, max {max(times):.1f} s; bound {bound} s; "
        f"visibility timeout alone: {defaults.VISIBILITY_TIMEOUT_S} s "
        f"({defaults.VISIBILITY_TIMEOUT_S / statistics.median(times):.0f}x the median)")


if __name__ == "__main__":
    main()
