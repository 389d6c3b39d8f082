"""Prometheus metrics of a predq worker, served on PREDQ_METRICS_PORT (default 9808, 0 = off).

What is measured (all names start with `predq_`):

- predictions served / failed (`model`, `version`) and logged (`model`, `version`,
  `destination` = database | spool); rows replayed from the spool; spool depth;
- batch size and batch latency histograms (`model`), per micro-batch or batch task;
- per serving process: current generation and version, the promote -> switch lag per
  generation (the last few generations), a switch-lag histogram and model load times;
- quality-gate verdicts: the live MAE it last saw and the rollbacks it made;
- production artifacts refused (`predq_artifact_refused`, `model`): once per generation.
- poison messages (`reason` = decode | invalid | dispatch) and the dead-letter list's depth.

Metric objects are built on first use (never at import) in a registry of their own. The
record functions are the hot path: one dict lookup, then prometheus_client's own lock.

Process model. predq's default threads pool has ONE serving process per node: it records
in memory and serves `/metrics` itself. With a prefork pool, every child records into
`PROMETHEUS_MULTIPROC_DIR` (prometheus_client's multiprocess mode) and the node's main
process serves the aggregate; `prepare_prefork()` creates that directory when it is unset.
The directory must start empty (a fresh temporary directory per worker start).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
    values,
)
from sqlalchemy import Engine, extract, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from modelstore import schema

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNKNOWN = "unknown"
KEEP_LAG_GENERATIONS = 8
"""Lag series kept per model and process: one per generation, oldest dropped first."""

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 10_000)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SWITCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class _BatchChildren:
    served: Any
    failed: Any
    size: Any
    seconds: Any


@dataclass
class PredqMetrics:
    """Every predq metric, registered in `registry` (a private one by default)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        mv = ["model", "version"]
        self.served = Counter("predq_predictions_served", "Predictions returned", mv, registry=r)
        self.failed = Counter("predq_predictions_failed", "Items answered with an error", mv,
                              registry=r)
        self.logged = Counter("predq_predictions_logged", "Prediction rows made durable",
                              [*mv, "destination"], registry=r)
        self.replayed = Counter("predq_spool_replayed_rows", "Spooled rows written to the "
                                "database after an outage", registry=r)
        self.dead_letters = Counter("predq_spool_dead_letter_rows", "Spooled rows the "
                                    "database refused, moved to the dead-letter file",
                                    registry=r)
        self.replay_blocked = Gauge("predq_spool_replay_blocked", "1 while spool replay is "
                                    "stopped (schema mismatch, dead-letter file full)",
                                    registry=r, multiprocess_mode="livemax")
        self.spool_depth = Gauge("predq_spool_depth_rows", "Rows waiting in the local spool",
                                 registry=r, multiprocess_mode="livemax")
        self.batch_size = Histogram("predq_batch_size_rows", "Rows per predicted batch",
                                    ["model"], buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_seconds = Histogram("predq_batch_seconds", "Validate + predict + log time "
                                       "of one batch", ["model"], buckets=LATENCY_BUCKETS,
                                       registry=r)
        self._process_metrics(r)
        self._batch: dict[tuple[str, str], _BatchChildren] = {}
        self._logged: dict[tuple[str, str, str], Any] = {}
        self._lag_generations: dict[str, list[str]] = {}
        self._versions: dict[str, str] = {}

    def _process_metrics(self, r: CollectorRegistry) -> None:
        self.generation = Gauge("predq_serving_generation", "Production generation this "
                                "process serves", ["model"], registry=r,
                                multiprocess_mode="liveall")
        self.version = Gauge("predq_serving_version", "1 for the version this process serves",
                             ["model", "version"], registry=r, multiprocess_mode="liveall")
        self.lag = Gauge("predq_promote_switch_lag_seconds", "Promote broadcast -> this "
                         "process serving the generation", ["model", "generation"], registry=r,
                         multiprocess_mode="liveall")
        self.lag_hist = Histogram("predq_promote_switch_seconds", "Promote -> switch lag",
                                  ["model"], buckets=SWITCH_BUCKETS, registry=r)
        self.load = Histogram("predq_model_load_seconds", "Fetch + verify + deserialize time "
                              "of a model", ["model"], buckets=LOAD_BUCKETS, registry=r)
        self.gate_mae = Gauge("predq_quality_gate_mae", "Live MAE the quality gate last saw",
                              ["model", "version"], registry=r, multiprocess_mode="liveall")
        self.gate_rollbacks = Counter("predq_quality_gate_rollbacks", "Rollbacks made by the "
                                      "live quality gate", ["model"], registry=r)
        self.cached_models = Gauge("predq_model_cache_versions", "Model versions held in "
                                   "this process's memory cache (PREDQ_MODEL_CACHE_SIZE)",
                                   ["model"], registry=r, multiprocess_mode="liveall")
        self.unknown_names = Gauge("predq_unknown_model_names", "Model names this process "
                                   "remembers as unknown or unavailable", registry=r,
                                   multiprocess_mode="liveall")
        self.refused = Counter("predq_artifact_refused", "Production artifacts this process "
                               "refused to serve (counted once per generation)", ["model"],
                               registry=r)
        self.returned = Counter("predq_broker_returned_messages", "Unacknowledged messages "
                                "this worker returned to the queue for another consumer",
                                ["reason"], registry=r)
        self.beat_age = Gauge("predq_broker_heartbeat_age_seconds", "Age of this consumer's "
                              "last broker heartbeat (it takes no work past half the owner "
                              "TTL)", registry=r, multiprocess_mode="livemax")
        self.poison = Counter("predq_poison_messages", "Messages refused before they ran "
                              "(rejected or parked)", ["reason"], registry=r)
        self.dead_depth = Gauge("predq_dead_letter_depth", "Messages in the Redis dead-letter "
                                "list (after this worker's last park)", registry=r,
                                multiprocess_mode="livemax")

    def batch_children(self, model: str, version: str) -> _BatchChildren:
        key = (model, version)
        children = self._batch.get(key)
        if children is None:
            children = _BatchChildren(self.served.labels(model, version),
                                      self.failed.labels(model, version),
                                      self.batch_size.labels(model),
                                      self.batch_seconds.labels(model))
            self._batch[key] = children
        return children

    def logged_child(self, model: str, version: str, destination: str) -> Any:
        # Cached: labels() costs more than the inc() on the hot path.
        key = (model, version, destination)
        child = self._logged.get(key)
        if child is None:
            child = self._logged[key] = self.logged.labels(model, version, destination)
        return child

    def keep_lag(self, model: str, generation: str) -> None:
        """Remember a lag series; drop the oldest beyond KEEP_LAG_GENERATIONS."""
        kept = self._lag_generations.setdefault(model, [])
        if generation in kept:
            return
        kept.append(generation)
        while len(kept) > KEEP_LAG_GENERATIONS:
            old = kept.pop(0)
            with suppress(KeyError):
                self.lag.remove(model, old)

    def serving_version(self, model: str, version: str) -> None:
        previous = self._versions.get(model)
        if previous == version:
            return
        if previous is not None:
            self.version.labels(model, previous).set(0)
        self.version.labels(model, version).set(1)
        self._versions[model] = version


_metrics: PredqMetrics | None = None
_metrics_lock = threading.Lock()
_server: dict[str, Any] = {}


def get_metrics() -> PredqMetrics:
    """This process's metrics, built on first use."""
    global _metrics
    current = _metrics
    if current is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = PredqMetrics()
            current = _metrics
    return current


# -- recording (hot path) -------------------------------------------------------------------

def observe_batch(model: str, version: str | None, size: int, failed: int,
                  seconds: float) -> None:
    """One predicted batch: `size` items, `failed` of them answered with an error."""
    children = get_metrics().batch_children(model, version or UNKNOWN)
    if size > failed:
        children.served.inc(size - failed)
    if failed:
        children.failed.inc(failed)
    children.size.observe(size)
    children.seconds.observe(seconds)


def observe_results(model: str, version: str | None, results: Iterable[Mapping[str, Any]],
                    seconds: float) -> None:
    """observe_batch for a list of per-item results ({"error": ...} counts as failed)."""
    size = failed = 0
    for result in results:
        size += 1
        failed += "error" in result
    observe_batch(model, version, size, failed, seconds)


def observe_write(rows: Iterable[Mapping[str, Any]], spooled: bool) -> None:
    """Rows made durable, by model and version: committed (`spooled=False`) or spooled."""
    destination = "spool" if spooled else "database"
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r.get("model_name") or UNKNOWN, r.get("model_version") or UNKNOWN)
        counts[key] = counts.get(key, 0) + 1
    m = get_metrics()
    for (model, version), n in counts.items():
        m.logged_child(model, version, destination).inc(n)


def observe_replay(rows: int) -> None:
    if rows > 0:
        get_metrics().replayed.inc(rows)


def set_spool_depth(rows: int) -> None:
    get_metrics().spool_depth.set(rows)


def observe_dead_letter() -> None:
    get_metrics().dead_letters.inc()


def set_replay_blocked(blocked: bool) -> None:
    get_metrics().replay_blocked.set(1 if blocked else 0)


def set_cached_models(model: str, count: int) -> None:
    get_metrics().cached_models.labels(model).set(count)


def set_unknown_names(count: int) -> None:
    get_metrics().unknown_names.set(count)
def observe_returned(reason: str, messages: int = 1) -> None:
    """Messages of a lapsed owner (or past the visibility timeout) sent back to a queue."""
    get_metrics().returned.labels(reason).inc(messages)


def set_heartbeat_age(seconds: float | None) -> None:
    if seconds is not None:
        get_metrics().beat_age.set(seconds)


def observe_switch(model: str, generation: int | None, lag_s: float | None,
                   load_s: float | None, version: str | None = None) -> None:
    """A serving process swapped models: generation, version, promote lag, load time."""
    m = get_metrics()
    if generation is not None:
        m.generation.labels(model).set(generation)
    if version is not None:
        m.serving_version(model, version)
    if lag_s is not None and generation is not None:
        m.lag.labels(model, str(generation)).set(lag_s)
        m.keep_lag(model, str(generation))
        m.lag_hist.labels(model).observe(lag_s)
    if load_s is not None and load_s > 0:
        m.load.labels(model).observe(load_s)


def promote_lag(engine: Engine, model: str, generation: int | None,
                promoted_at: float | None) -> float | None:
    """Seconds from the promote to now, for a process that just switched to `generation`.

    Measured on the database's clock, from the promote transaction (the pointer's
    `updated_at`), so it also covers switches found by polling or the shared signal.
    Falls back to the broadcast's `promoted_at` when that row is gone or unreadable.
    """
    fallback = None if promoted_at is None else max(0.0, time.time() - promoted_at)
    if generation is None:
        return fallback
    P = schema.production_pointer
    age: ColumnElement[Any]
    if engine.dialect.name == "postgresql":
        age = extract("epoch", func.localtimestamp() - P.c.updated_at)
    else:
        age = (func.julianday("now") - func.julianday(P.c.updated_at)) * 86_400.0
    try:
        with engine.connect() as conn:
            found = conn.execute(select(age).where(
                P.c.model_name == model, P.c.generation == generation)).scalar()
    except SQLAlchemyError as exc:
        log.debug("promote lag of %r generation %s unknown: %s", model, generation, exc)
        return fallback
    return float(found) if found is not None and float(found) >= 0 else fallback


def observe_gate(model: str, version: str, mae: float | None) -> None:
    if mae is not None:
        get_metrics().gate_mae.labels(model, version).set(mae)


def observe_poison(reason: str, dead_letter_depth: int | None) -> None:
    """One message refused before it ran; the dead-letter list's length when it was parked."""
    m = get_metrics()
    m.poison.labels(reason).inc()
    if dead_letter_depth is not None:
        m.dead_depth.set(dead_letter_depth)


def observe_gate_rollback(model: str) -> None:
    get_metrics().gate_rollbacks.labels(model).inc()


def observe_refused(model: str) -> None:
    get_metrics().refused.labels(model).inc()


# -- serving ----------------------------------------------------------------------------------

def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_prefork() -> str | None:
    """Before a prefork pool forks: make sure children record into a shared directory.

    Uses PROMETHEUS_MULTIPROC_DIR when set; otherwise creates a fresh temporary directory
    and switches prometheus_client to multiprocess mode (possible only while no metric
    exists in this process, which holds in the worker's main process before the fork).
    """
    path = multiprocess_dir()
    if path is None:
        if _metrics is not None:
            log.warning("metrics already recorded in single-process mode: pool children's "
                        "metrics will not be exported; set %s to an empty directory",
                        MULTIPROC_ENV)
            return None
        path = tempfile.mkdtemp(prefix="predq-metrics-")
        _server["owned_dir"] = (os.getpid(), path)
        os.environ[MULTIPROC_ENV] = path
        values.ValueClass = values.get_value_class()
        log.info("prefork pool: worker metrics aggregated through %s", path)
    return path


def exposition_registry() -> CollectorRegistry:
    """What /metrics serves: this process's registry, or every process's files."""
    path = multiprocess_dir()
    if path is None:
        return get_metrics().registry
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry


def start_server(port: int, addr: str = "0.0.0.0") -> bool:
    """Serve /metrics on `port` once per process (0: disabled). False if not serving."""
    if port == 0:
        return False
    with _metrics_lock:
        if _server.get("pid") == os.getpid():
            return True
        try:
            httpd, thread = start_http_server(port, addr=addr, registry=exposition_registry())
        except OSError as exc:
            log.warning("metrics endpoint not started: cannot listen on %s:%d: %s", addr, port,
                        exc)
            return False
        _server.update(pid=os.getpid(), httpd=httpd, thread=thread, port=port)
    log.info("predq metrics on http://%s:%d/metrics", addr, port)
    return True


def stop_server() -> None:
    """Stop this process's endpoint; remove a multiprocess directory it created."""
    with _metrics_lock:
        httpd = _server.pop("httpd", None)
        if httpd is not None and _server.pop("pid", None) == os.getpid():
            httpd.shutdown()
            httpd.server_close()
        owner, path = _server.pop("owned_dir", (None, None))
        if owner == os.getpid() and path:
            shutil.rmtree(path, ignore_errors=True)


def process_exit() -> None:
    """A pool child exits: drop its live gauges from the multiprocess directory."""
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(os.getpid(), path)
