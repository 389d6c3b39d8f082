"""The Celery app: `celery -A workers worker` starts a predq worker.

Settings are parsed once here, at the entry point. Serving state is created per process
after any fork (worker_process_init for prefork children, worker_ready for the threads
and solo pools) and closed on shutdown.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from modelstore import brokers
from modelstore.defaults import DEFAULT_MODEL_NAME
from modelstore.engine import redact_url
from modelstore.errors import PredqError
from modelstore.settings import Settings
from workers import amqp, board, control, fastjson, fastrepr, metrics, poison, quality_gate
from workers.state import close_state, get_state
from workers.tasks import register_tasks

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> Celery:
    fastjson.install(fastjson.ShapeLimits(settings.max_json_depth, settings.max_json_items))
    fastrepr.install()
    app = Celery("predq")
    app.conf.update(settings.celery_config())
    app.conf.update(pool_config(settings, sys.argv))
    if settings.broker_url.startswith("filesystem://"):
        # kombu's stock filesystem transport loses messages to a write/read race; the
        # producer's fixed transport is the same one the client uses (embedded demo).
        app.conf.broker_transport = "producer.fs_transport:Transport"
        app.conf.broker_url = "filesystem://localhost/"
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Only plain Redis: sentinel:// keeps kombu's own transport, amqp:// acks natively.
        app.conf.broker_transport = "workers.transport:ReliableTransport"
    if brokers.is_amqp(settings.broker_url):
        amqp.install(app)
    register_tasks(app, settings)
    _connect_signals(settings)
    return app


def pool_config(settings: Settings, argv: Sequence[str]) -> dict[str, Any]:
    """The bare `celery -A workers worker` serves like `predq worker`: the threads pool with
    PREDQ_WORKER_THREADS threads (one model copy and one batcher per process; prefork -c 2
    reached 0.54x a no-op task and twice the memory).

    Celery's CLI cannot tell an explicit `--pool prefork` from its default, and swaps in
    `worker_pool` for both (celery/bin/worker.py, WorkersPool.convert). So when the command
    line names a pool, the app sets neither option and Celery's own defaults apply: an
    explicit prefork gets prefork with one process per CPU."""
    if _names_pool(argv):
        return {}
    return {"worker_pool": "threads", "worker_concurrency": settings.worker_threads}


def _names_pool(argv: Sequence[str]) -> bool:
    return any(arg in ("-P", "--pool") or arg.startswith("--pool=")
               or (arg.startswith("-P") and not arg.startswith("--")) for arg in argv)


def _warm(settings: Settings) -> None:
    """Load the default model before the first task, so it serves current production."""
    try:
        get_state(settings).slot(DEFAULT_MODEL_NAME)
    except PredqError as exc:
        log.warning("no %r model to preload yet: %s", DEFAULT_MODEL_NAME, exc)


def _connect_signals(settings: Settings) -> None:
    forks = {"value": False}

    @worker_init.connect(weak=False)
    def on_init(sender: Any = None, **_: Any) -> None:
        pool = str(getattr(sender, "pool_cls", "")).lower()
        forks["value"] = "prefork" in pool or "processes" in pool
        control.set_pool_kind("prefork" if forks["value"] else "threads")
        if forks["value"]:
            board.open_board()  # before the fork: children post what they serve there
        poison.install(sender.app, settings)  # before the consumer builds task strategies
        if forks["value"] and settings.metrics_port:
            metrics.prepare_prefork()  # before the fork: children record to a shared dir
        # Each batch allocates thousands of short-lived dicts; the default gen-0 threshold
        # (700) ran the collector so often it took ~15% of a batch task (bench/README.md).
        gc.set_threshold(100_000, 50, 100)
        if not settings.log_tasks:
            # Celery logs every success with its full result at INFO: costly at 1,000s/s.
            logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
            logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
        log.info("predq worker: broker %s, database %s, settings %s",
                 redact_url(settings.broker_url), redact_url(settings.database_url),
                 settings.describe())

    @worker_process_init.connect(weak=False)
    def on_child(**_: Any) -> None:
        _warm(settings)

    @worker_ready.connect(weak=False)
    def on_ready(sender: Any = None, **_: Any) -> None:
        if not forks["value"]:
            _warm(settings)
        metrics.start_server(settings.metrics_port)
        quality_gate.start_gate(settings, quality_gate.broadcast_rollback(sender.app))

    @worker_process_shutdown.connect(weak=False)
    def on_child_exit(**_: Any) -> None:
        close_state()
        board.withdraw()
        metrics.process_exit()

    @worker_shutdown.connect(weak=False)
    def on_shutdown(**_: Any) -> None:
        quality_gate.stop_gate()
        close_state()
        board.close_board()
        metrics.stop_server()
