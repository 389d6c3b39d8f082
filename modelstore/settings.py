"""One typed settings object, parsed from the environment at an entry point (arq style)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from modelstore import brokers, defaults
from modelstore.artifacts import Keys, parse_keys
from modelstore.errors import ConfigError

N = TypeVar("N", int, float)


def _parse(env: Mapping[str, str], name: str, cast: Callable[[str], N], expected: str,
           ok: Callable[[N], bool], rule: str) -> N | None:
    """The variable parsed with `cast` (None when unset), or ConfigError naming it."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected {expected}, got {raw!r}") from None
    if not ok(value):
        raise ConfigError(f"{name}: {rule}, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = _parse(env, name, int, "an integer", lambda v: v > 0, "must be positive")
    return default if value is None else value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = _parse(env, name, float, "a number of seconds", lambda v: v > 0,
                   "must be positive")
    return default if value is None else value


def _linger_ms(env: Mapping[str, str]) -> float:
    value = _parse(env, "PREDQ_BATCH_LINGER_MS", float, "a number of milliseconds (0 never "
                   "waits)", lambda v: 0 <= v <= 1000, "must be 0..1000")
    return defaults.BATCH_LINGER_MS if value is None else value


def _json_depth(env: Mapping[str, str]) -> int:
    value = _parse(env, "PREDQ_MAX_JSON_DEPTH", int, "an integer", lambda v: 8 <= v <= 1000,
                   "must be 8..1000")
    return defaults.MAX_JSON_DEPTH if value is None else value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    """A TCP port; 0 means "disabled"."""
    value = _parse(env, name, int, "a port number (0 disables)", lambda v: 0 <= v <= 65535,
                   "must be 0..65535")
    return default if value is None else value


def _margin(env: Mapping[str, str], name: str) -> float | None:
    """A relative margin such as 0.1 (10 %); unset or empty means "off"."""
    return _parse(env, name, float, "a fraction such as 0.1", lambda v: 0 <= v < 100,
                  "must be a non-negative fraction")


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected 1/0 (true/false), got {raw!r}")


def _queue_type(env: Mapping[str, str]) -> str:
    raw = (env.get("PREDQ_QUEUE_TYPE") or defaults.QUEUE_TYPE).strip().lower()
    if raw not in brokers.QUEUE_TYPES:
        raise ConfigError(f"PREDQ_QUEUE_TYPE: expected quorum or classic, got {raw!r}")
    return raw


def _grain(env: Mapping[str, str]) -> str:
    raw = (env.get("PREDQ_LOG_PARTITION") or defaults.LOG_PARTITION).strip().lower()
    if raw not in ("day", "week", "month"):
        raise ConfigError(f"PREDQ_LOG_PARTITION: expected day, week or month, got {raw!r}")
    return raw


def _retention(env: Mapping[str, str]) -> int:
    value = _parse(env, "PREDQ_LOG_RETENTION_DAYS", int, "a number of days (0 keeps all)",
                   lambda v: v >= 0, "must be 0 or more")
    return defaults.LOG_RETENTION_DAYS if value is None else value


_DATABASE_SCHEMES = ("postgresql", "postgres", "sqlite")
_BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp", "filesystem", "memory",
                   "sentinel", "sqla")


def _scheme(url: str) -> str:
    """'postgresql' of 'postgresql+psycopg2://...', '' when there is no scheme."""
    head, sep, _ = url.partition("://")
    return head.split("+")[0].lower() if sep else ""


def _database_url(env: Mapping[str, str]) -> str:
    """DATABASE_URL, refused in one line when its scheme or form cannot work."""
    url = env.get("DATABASE_URL") or defaults.DEFAULT_DATABASE_URL
    expected = ("expected postgresql://user:password@host:5432/dbname or "
                "sqlite:///path/to/file.db")
    if _scheme(url) not in _DATABASE_SCHEMES:
        raise ConfigError(f"DATABASE_URL: unsupported database URL {_masked(url)!r}; "
                          f"{expected}")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"DATABASE_URL: malformed URL {_masked(url)!r} ({exc}); "
                          f"{expected}") from None
    return url


def _broker_url(env: Mapping[str, str]) -> str:
    url = env.get("PREDQ_BROKER_URL") or defaults.DEFAULT_BROKER_URL
    if _scheme(url) not in _BROKER_SCHEMES:
        raise ConfigError(f"PREDQ_BROKER_URL: unsupported broker URL {_masked(url)!r}; "
                          "expected redis://host:6379/0, amqp://user:password@host:5672// "
                          "or filesystem:///path")
    return url


def _masked(url: str) -> str:
    """The URL with anything between '://' and '@' hidden (it may hold a password)."""
    head, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{head}://***@{rest.rsplit('@', 1)[1]}"
    return url[:80]


def _names(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name) or ""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Everything predq reads from the environment. Secrets are kept out of repr()."""

    database_url: str = field(default=defaults.DEFAULT_DATABASE_URL, repr=False)
    broker_url: str = field(default=defaults.DEFAULT_BROKER_URL, repr=False)
    result_backend: str = field(default=defaults.DEFAULT_BROKER_URL, repr=False)
    model_dir: Path = Path(defaults.DEFAULT_MODEL_DIR)
    signing_key: Keys = field(default=None, repr=False)
    """PREDQ_SIGNING_KEY: comma-separated keys; the first signs, any verifies (rotation)."""
    allow_unsigned_pickle: bool = False
    """PREDQ_ALLOW_UNSIGNED_PICKLE=1: accept unsigned joblib uploads from the queue (unsafe)."""
    skops_trusted: tuple[str, ...] = ()
    visibility_timeout_s: int = defaults.VISIBILITY_TIMEOUT_S
    owner_ttl_s: int = defaults.OWNER_TTL_S
    connect_timeout_s: int = defaults.CONNECT_TIMEOUT_S
    generation_poll_s: float = defaults.GENERATION_POLL_S
    max_batch_size: int = defaults.MAX_BATCH_SIZE
    batch_linger_ms: float = defaults.BATCH_LINGER_MS
    max_rows_per_task: int = defaults.MAX_ROWS_PER_TASK
    max_artifact_b64_bytes: int = defaults.MAX_ARTIFACT_B64_BYTES
    worker_threads: int = defaults.WORKER_THREADS
    spool_dir: Path = Path(defaults.SPOOL_DIR)
    metrics_port: int = defaults.METRICS_PORT
    quality_gate_margin: float | None = None
    quality_gate_min_rows: int = defaults.QUALITY_GATE_MIN_ROWS
    quality_gate_interval_s: float = defaults.QUALITY_GATE_INTERVAL_S
    quality_gate_models: tuple[str, ...] = ()
    log_tasks: bool = False
    max_json_depth: int = defaults.MAX_JSON_DEPTH
    max_json_items: int = defaults.MAX_JSON_ITEMS
    dead_letter_max: int = defaults.DEAD_LETTER_MAX
    artifact_cache_dir: Path | None = None
    model_cache_size: int = defaults.MODEL_CACHE_SIZE
    log_partition: str = defaults.LOG_PARTITION
    log_partitions_ahead: int = defaults.LOG_PARTITIONS_AHEAD
    log_retention_days: int = defaults.LOG_RETENTION_DAYS
    queue_type: str = defaults.QUEUE_TYPE
    confirm_publish: bool = True
    delivery_limit: int = defaults.DELIVERY_LIMIT
    amqp_heartbeat_s: int = defaults.AMQP_HEARTBEAT_S
    sentinel_master: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse the environment; a malformed value raises ConfigError naming the variable."""
        env = os.environ if env is None else env
        broker = _broker_url(env)
        model_dir = Path(env.get("PREDQ_MODEL_DIR") or defaults.DEFAULT_MODEL_DIR)
        cache_dir = env.get("PREDQ_ARTIFACT_CACHE_DIR")
        backend = env.get("PREDQ_RESULT_BACKEND") or broker
        master = (env.get("PREDQ_SENTINEL_MASTER") or "").strip() or None
        brokers.check_urls(broker, backend, bool(env.get("PREDQ_RESULT_BACKEND")), master)
        return cls(
            database_url=_database_url(env),
            broker_url=broker,
            result_backend=backend,
            model_dir=model_dir,
            signing_key=parse_keys(env.get("PREDQ_SIGNING_KEY")),
            allow_unsigned_pickle=_flag(env, "PREDQ_ALLOW_UNSIGNED_PICKLE"),
            skops_trusted=_names(env, "PREDQ_SKOPS_TRUSTED"),
            visibility_timeout_s=_int(
                env, "PREDQ_VISIBILITY_TIMEOUT", defaults.VISIBILITY_TIMEOUT_S
            ),
            owner_ttl_s=_int(env, "PREDQ_OWNER_TTL", defaults.OWNER_TTL_S),
            connect_timeout_s=_int(env, "PREDQ_CONNECT_TIMEOUT", defaults.CONNECT_TIMEOUT_S),
            generation_poll_s=_float(env, "PREDQ_GENERATION_POLL", defaults.GENERATION_POLL_S),
            max_batch_size=_int(env, "PREDQ_MAX_BATCH_SIZE", defaults.MAX_BATCH_SIZE),
            batch_linger_ms=_linger_ms(env),
            max_rows_per_task=_int(env, "PREDQ_MAX_ROWS_PER_TASK", defaults.MAX_ROWS_PER_TASK),
            max_artifact_b64_bytes=_int(
                env, "PREDQ_MAX_ARTIFACT_B64_BYTES", defaults.MAX_ARTIFACT_B64_BYTES
            ),
            worker_threads=_int(env, "PREDQ_WORKER_THREADS", defaults.WORKER_THREADS),
            spool_dir=Path(env.get("PREDQ_SPOOL_DIR") or defaults.SPOOL_DIR),
            metrics_port=_port(env, "PREDQ_METRICS_PORT", defaults.METRICS_PORT),
            quality_gate_margin=_margin(env, "PREDQ_QUALITY_GATE_MARGIN"),
            quality_gate_min_rows=_int(env, "PREDQ_QUALITY_GATE_MIN_ROWS",
                                       defaults.QUALITY_GATE_MIN_ROWS),
            quality_gate_interval_s=_float(env, "PREDQ_QUALITY_GATE_INTERVAL",
                                           defaults.QUALITY_GATE_INTERVAL_S),
            quality_gate_models=_names(env, "PREDQ_QUALITY_GATE_MODELS"),
            log_tasks=_flag(env, "PREDQ_LOG_TASKS"),
            artifact_cache_dir=Path(cache_dir) if cache_dir else model_dir / ".cache",
            model_cache_size=_int(env, "PREDQ_MODEL_CACHE_SIZE", defaults.MODEL_CACHE_SIZE),
            log_partition=_grain(env),
            log_partitions_ahead=_int(env, "PREDQ_LOG_PARTITIONS_AHEAD",
                                      defaults.LOG_PARTITIONS_AHEAD),
            log_retention_days=_retention(env),
            queue_type=_queue_type(env),
            confirm_publish=_flag(env, "PREDQ_CONFIRM_PUBLISH", True),
            delivery_limit=_int(env, "PREDQ_DELIVERY_LIMIT", defaults.DELIVERY_LIMIT),
            amqp_heartbeat_s=_int(env, "PREDQ_AMQP_HEARTBEAT", defaults.AMQP_HEARTBEAT_S),
            sentinel_master=master,
            max_json_depth=_json_depth(env),
            max_json_items=_int(env, "PREDQ_MAX_JSON_ITEMS", defaults.MAX_JSON_ITEMS),
            dead_letter_max=_int(env, "PREDQ_DEAD_LETTER_MAX", defaults.DEAD_LETTER_MAX),
        )

    def celery_config(self) -> dict[str, Any]:
        """Celery configuration shared by workers and producers (a plain dict: the store
        imports nothing of Celery's). JSON only: pickle never crosses the wire."""
        # kombu sweeps abandoned (unacked) messages every interval x throttle seconds
        # (10 x 10 by default). On Redis predq's transport sweeps for dead owners at the
        # same tick: keep it well below the owner TTL and the visibility timeout, so a
        # dead worker's messages come back within TTL + interval.
        sweep = min(defaults.SWEEP_INTERVAL_S, self.visibility_timeout_s // 3,
                    self.owner_ttl_s // 2)
        transport: dict[str, Any] = {
            "visibility_timeout": self.visibility_timeout_s,
            "unacked_restore_interval": max(1, sweep),
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": 60,
        }
        if self.broker_url.startswith(("redis://", "rediss://")):
            # One list per queue: the workers' crash-safe fetch moves from a single key.
            transport["priority_steps"] = [0]
            transport["owner_ttl"] = self.owner_ttl_s
        if self.broker_url.startswith("filesystem://"):
            transport.update(_filesystem_folders(self.broker_url))
        if brokers.is_sentinel(self.broker_url):
            transport.update(brokers.sentinel_options(self.sentinel_master))
        config: dict[str, Any] = {
            # A bare rediss:// would make kombu fall back to CERT_NONE: verify instead.
            "broker_url": _verified_rediss(_kombu_url(self.broker_url)),
            "result_backend": _verified_rediss(brokers.result_backend_url(self.result_backend)),
            "task_serializer": "json",
            "result_serializer": "json",
            "accept_content": ["json"],
            "result_accept_content": ["json"],
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "worker_prefetch_multiplier": 1,
            "broker_transport_options": transport,
            "result_backend_transport_options": {
                "visibility_timeout": self.visibility_timeout_s,
                # Celery's default retries a lost result connection ~20 times (19 s,
                # ignoring get(timeout=)); a few quick tries, then a clear error.
                "retry_policy": {"max_retries": 3, "interval_start": 0,
                                 "interval_step": 0.5, "interval_max": 1},
            },
            "broker_connection_retry_on_startup": True,
            "broker_connection_timeout": self.connect_timeout_s,
            "redis_socket_connect_timeout": self.connect_timeout_s,
            "redis_retry_on_timeout": True,
            "result_expires": 24 * 3600,
            "task_default_queue": defaults.DEFAULT_QUEUE,
            "worker_send_task_events": True,
            "task_send_sent_event": True,
            "worker_hijack_root_logger": False,
        }
        if brokers.is_sentinel(self.result_backend):
            config["result_backend_transport_options"].update(
                brokers.sentinel_options(self.sentinel_master))
        if brokers.is_amqp(self.broker_url):
            # RabbitMQ acknowledges natively: none of Redis's visibility-timeout options.
            config.update(brokers.amqp_config(self.queue_type, self.delivery_limit,
                                              self.confirm_publish, self.amqp_heartbeat_s))
        return config

    def describe(self) -> dict[str, str]:
        """Settings as strings with passwords and the signing key masked, safe to log."""
        from modelstore.engine import redact_url

        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "signing_key":
                out[f.name] = "set" if value else "unset"
            elif f.name.endswith("_url") or f.name == "result_backend":
                out[f.name] = redact_url(str(value))
            else:
                out[f.name] = str(value)
        return out


def _kombu_url(url: str) -> str:
    # kombu's filesystem transport takes its folders from transport options, not the URL.
    return "filesystem://" if url.startswith("filesystem://") else url


def _filesystem_folders(url: str) -> dict[str, Any]:
    """filesystem:///some/dir → queue and control folders below that directory."""
    root = Path(url.removeprefix("filesystem://") or defaults.FILESYSTEM_BROKER_DIR)
    queue, control = root / "queue", root / "control"
    for folder in (queue, control):
        folder.mkdir(parents=True, exist_ok=True)
    return {"data_folder_in": str(queue), "data_folder_out": str(queue),
            "control_folder": str(control), "polling_interval": 0.05}


def _verified_rediss(url: str) -> str:
    """Celery's Redis result backend refuses a rediss:// URL without ssl_cert_reqs: make
    the safe choice (verify the server's certificate) explicit."""
    if not url.startswith("rediss://") or "ssl_cert_reqs" in url:
        return url
    return url + ("&" if "?" in url else "?") + "ssl_cert_reqs=required"
