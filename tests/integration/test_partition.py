"""Issue 18: a worker host cut off from the broker mid-stream. Two worker hosts, one in a
network namespace reaching the broker over a veth link; Postgres is reached over its Unix
socket, so only the broker link is cut. On predq's default settings the other host logs
every request within 60 s of the cut; after the link heals the log still holds exactly N
rows with N distinct request ids.

The namespaced host predicts slowly (45 s per micro-batch), so at the cut it holds tasks it
has not finished: they are the ones the other host must take over. It finishes them after
the link heals, and its late rows and acks must change nothing.

Each broker is one entry of BROKERS: a context manager giving the URL for this host and
the URL for the namespaced host (over the link). RabbitMQ listens on 127.0.0.1 only, so
the namespaced host reaches it through a TCP proxy bound to this end of the link; when
the link is cut, RabbitMQ stops hearing that worker's heartbeats (PREDQ_AMQP_HEARTBEAT)
and requeues what it held.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.faults.tcpproxy import TcpProxy
from tests.support import models, rabbit
from tests.support.db import fetch
from tests.support.netns import VethNamespace, VethRedis, veth_namespace
from tests.support.sleepy import SLEEPY_CALLS_ENV, SLEEPY_SECONDS_ENV, marks, register_sleepy
from tests.support.workerproc import WorkerProcess, client_app, worker_env

pytestmark = pytest.mark.e2e

TASKS = 2_000
TAKEOVER_DEADLINE_S = 60.0
THERE_PREDICT_S = 45
PG_SOCKET_DIR = "/var/run/postgresql"
AMQP_PORT = 5672


@dataclass(frozen=True)
class Broker:
    here_url: str
    """For the producer and the worker host in this namespace."""
    there_url: str
    """For the worker host in the namespace, over the veth link."""
    here_backend: str
    there_backend: str
    queue_depth: Callable[[], int]
    """Messages queued or held unacknowledged (0 once everything is done)."""


@contextmanager
def redis_broker(ns: VethNamespace, workdir: Path) -> Iterator[Broker]:
    server = VethRedis(workdir, ns.host_ip).start()
    client = server.client()

    def depth() -> int:
        return int(client.llen("predq")) + int(client.hlen("unacked"))

    try:
        yield Broker(server.url(0), server.link_url(0), server.url(0), server.link_url(0),
                     depth)
    finally:
        client.close()
        server.stop()


@contextmanager
def amqp_broker(ns: VethNamespace, workdir: Path) -> Iterator[Broker]:
    vhost = rabbit.add_vhost()
    results = VethRedis(workdir, ns.host_ip).start()
    proxy = TcpProxy(AMQP_PORT, bind_host=ns.host_ip).start()
    here = rabbit.vhost_url(vhost)
    there = here.replace(f"127.0.0.1:{AMQP_PORT}", f"{ns.host_ip}:{proxy.port}")

    def depth() -> int:
        out = rabbit.rabbitmqctl("list_queues", "-p", vhost, "name", "messages",
                                 "--no-table-headers")
        counts = dict(line.split("\t", 1) for line in out.strip().splitlines() if "\t" in line)
        return int(counts.get("predq", "0"))

    try:
        yield Broker(here, there, results.url(1), results.link_url(1), depth)
    finally:
        proxy.close()
        results.stop()
        rabbit.delete_vhost(vhost)


BROKERS: dict[str, Callable[[VethNamespace, Path], AbstractContextManager[Broker]]] = {
    "redis": redis_broker,
    "amqp": amqp_broker,
}


def needs_netns() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("redis-server") is None:
        from tests.conftest import unavailable

        unavailable("network namespaces (root, iproute2, redis-server)",
                    PermissionError("not root or tools missing"))


def over_unix_socket(pg_url: str) -> str:
    """The same database reached over Postgres's Unix socket (no TCP, no veth)."""
    url = make_url(pg_url).set(drivername="postgresql", host=None, port=None,
                               query={"host": PG_SOCKET_DIR})
    return url.render_as_string(hide_password=False)


def distinct_logged(url: str) -> tuple[int, int]:
    total, distinct = fetch(url, "SELECT count(*), count(DISTINCT request_id) "
                                 "FROM model_predictions")[0]
    return int(total), int(distinct)


def wait_for(url: str, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    found = distinct_logged(url)[1]
    while found < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
        found = distinct_logged(url)[1]
    return found


@pytest.mark.parametrize("broker_name", sorted(BROKERS))
def test_cut_off_host_tasks_run_elsewhere_within_60s(
        broker_name: str, pg_url: str, tmp_path: Path) -> None:
    needs_netns()
    if not Path(PG_SOCKET_DIR).exists():
        pytest.skip(f"no Postgres Unix socket in {PG_SOCKET_DIR}")
    register_sleepy(pg_url, "v1", seconds=0)
    calls = tmp_path / "calls.log"
    db_url = over_unix_socket(pg_url)
    with veth_namespace() as ns, BROKERS[broker_name](ns, tmp_path / "broker") as broker:
        here_env = worker_env(db_url, broker.here_url, tmp_path / "here",
                              PREDQ_RESULT_BACKEND=broker.here_backend)
        there_env = worker_env(db_url, broker.there_url, tmp_path / "there",
                               PREDQ_RESULT_BACKEND=broker.there_backend,
                               **{SLEEPY_CALLS_ENV: str(calls),
                                  SLEEPY_SECONDS_ENV: str(THERE_PREDICT_S)})
        app = client_app(here_env)
        # Queued before the workers start, so the cut lands mid-stream however fast they are.
        for i, features in enumerate(models.rows(TASKS)):
            app.send_task("predq.predict", ignore_result=True,
                          kwargs={"features": features, "request_id": f"cut-{i}"})
        here = WorkerProcess(here_env, "here", tmp_path / "here.log")
        there = WorkerProcess(there_env, "there", tmp_path / "there.log")
        there.args = [*ns.exec_prefix(), *there.args]
        try:
            here.start()
            there.start()
            here.wait_ready(app)
            there.wait_ready(app)
            before = wait_for(pg_url, TASKS // 3, timeout=120)
            ns.cut()
            cut_at = time.monotonic()
            assert before < TASKS, "the cut must land mid-stream"
            logged = wait_for(pg_url, TASKS, TAKEOVER_DEADLINE_S)
            took = time.monotonic() - cut_at
            assert logged == TASKS, (
                f"{TASKS - logged} of {TASKS} requests not logged {took:.0f} s after the "
                f"cut (at {before})")
            assert marks(calls, "start"), "the cut host held no unfinished task"
            ns.heal()
            there.wait_ready(app, timeout=120)
            # It finishes what it held at the cut: late rows (deduplicated), late acks.
            deadline = time.monotonic() + 3 * THERE_PREDICT_S
            while (len(marks(calls, "done")) < len(marks(calls, "start"))
                   and time.monotonic() < deadline):
                time.sleep(0.5)
            assert len(marks(calls, "done")) == len(marks(calls, "start"))
            time.sleep(5)  # its writes and acks after the last predict
            assert distinct_logged(pg_url) == (TASKS, TASKS)
            assert broker.queue_depth() == 0, "a message was left queued or unacknowledged"
        finally:
            ns.heal()
            there.stop()
            here.stop()
    assert distinct_logged(pg_url) == (TASKS, TASKS)
