"""How the producer reaches workers: a fast reachability check, and how an artifact
travels to `predq.store_model` (a shared path or base64, never pickle in a message)."""

from __future__ import annotations

import base64
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from modelstore import artifacts, defaults
from modelstore.engine import redact_url
from modelstore.formats import FORMAT_JOBLIB, PICKLE_FORMATS
from modelstore.settings import Settings
from producer import payloads
from producer.errors import BrokerUnavailable
from producer.payloads import ArtifactPayload

log = logging.getLogger(__name__)

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}
_CONTROL_SCHEMES = ("redis", "amqp", "pyamqp", "filesystem")
"""Brokers with Celery remote control, so workers can be pinged."""


def client_deadlines(settings: Settings) -> dict[str, Any]:
    """Celery settings that bound every connect AND read of the producer's Redis result
    backend (Celery's default read timeout is 120 s, retried). No retry on a timeout: it
    would double the deadline. Workers keep their own settings."""
    limit = float(settings.connect_timeout_s)
    return {"redis_socket_timeout": limit, "redis_socket_connect_timeout": limit,
            "redis_retry_on_timeout": False}


def _check_options(settings: Settings) -> dict[str, Any]:
    """Transport options of the reachability check's own connection: kombu's Redis
    transport reads with no timeout by default, so a server that accepts TCP but never
    answers would hang the first command forever; py-amqp bounds its handshake by
    connect_timeout already. Only this connection gets them: on the app's pooled
    connections a read timeout broke reconnecting after a Redis restart."""
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return {}
    limit = float(settings.connect_timeout_s)
    return {"socket_timeout": limit, "socket_connect_timeout": limit,
            "retry_on_timeout": False}


def check_reachable(app: Any, settings: Settings) -> None:
    """Raise BrokerUnavailable naming the (password-masked) URL when the broker or a Redis
    result backend does not answer within the connect timeout."""
    try:
        with app.connection_for_write(transport_options=_check_options(settings)) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2,
                                   timeout=settings.connect_timeout_s)
    except (KombuOperationalError, RedisError, OSError) as exc:
        raise BrokerUnavailable(
            f"broker {redact_url(settings.broker_url)} unreachable: {exc}") from exc
    if settings.result_backend.startswith(("redis://", "rediss://")):
        try:
            app.backend.client.ping()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"result backend {redact_url(settings.result_backend)} "
                                    f"unreachable: {exc}") from exc


def workers_answer(app: Any, settings: Settings, timeout: float) -> bool:
    """Ping workers for WORKER_CHECK_S; when none answers, warn that the request waits in
    the queue for up to `timeout` s. True when one answered or nobody can tell."""
    if not settings.broker_url.startswith(_CONTROL_SCHEMES):
        return True  # no remote control to ask (e.g. sqla)
    try:
        replies = app.control.ping(timeout=defaults.WORKER_CHECK_S, limit=1)
    except (KombuOperationalError, RedisError, OSError):
        return False  # the wait itself reports the broker
    if not replies:
        log.warning("no predq worker answered within %g s at %s: the request waits in "
                    "queue %r for up to %g s; start one with `predq worker`",
                    defaults.WORKER_CHECK_S, redact_url(settings.broker_url),
                    defaults.DEFAULT_QUEUE, timeout)
    return bool(replies)


def workers_share_filesystem(settings: Settings) -> bool:
    """Whether workers can read this machine's files: a filesystem broker or a local one.

    PREDQ_SHARED_ARTIFACT_PATHS=1/0 overrides the guess (e.g. a shared NFS mount).
    """
    forced = os.environ.get("PREDQ_SHARED_ARTIFACT_PATHS", "").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    if settings.broker_url.startswith("filesystem://"):
        return True
    return (urlsplit(settings.broker_url).hostname or "") in _LOCAL_HOSTS


@contextmanager
def artifact_for_task(artifact: object, settings: Settings, fmt: str = FORMAT_JOBLIB,
                      sample: Any = None) -> Iterator[ArtifactPayload | None]:
    """The store_model payload for an artifact, or None when it cannot travel by task.

    A file goes by path when workers share the filesystem, else as base64 under the cap.
    An object goes as base64 under the cap, else through a temporary file under the model
    dir (deleted afterwards) when workers share the filesystem.
    """
    shared = workers_share_filesystem(settings)
    cap = settings.max_artifact_b64_bytes
    if isinstance(artifact, str | Path) and shared:
        path = Path(artifact).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"artifact {path}: no such file")
        yield ArtifactPayload(str(path), None, payloads.describe_file(path, fmt),
                              path.stat().st_size, fmt)
        return
    data, schema = payloads.artifact_bytes(artifact, fmt, sample)
    encoded = payloads.encode_b64(data, cap)
    if encoded is not None:
        yield ArtifactPayload(None, encoded, schema, len(data), fmt)
    elif shared:
        with _temporary_file(settings.model_dir / "incoming", data) as path:
            yield ArtifactPayload(str(path), None, schema, len(data), fmt)
    else:
        yield None


@contextmanager
def _temporary_file(folder: Path, data: bytes) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix="upload-", suffix=".joblib")
    path = Path(name).resolve()
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield path
    finally:
        path.unlink(missing_ok=True)


def too_big_message(artifact: object, settings: Settings) -> str:
    what = f"artifact {artifact}" if isinstance(artifact, str | Path) else "artifact"
    return (f"{what}: too large for a base64 task (PREDQ_MAX_ARTIFACT_B64_BYTES="
            f"{settings.max_artifact_b64_bytes}) and workers do not share this filesystem; "
            "register with direct=True (CLI: --direct) or set PREDQ_SHARED_ARTIFACT_PATHS=1")


def upload_signature(payload: ArtifactPayload, settings: Settings) -> str | None:
    """The artifact's HMAC (first key of the ring) when this pipeline holds
    PREDQ_SIGNING_KEY and the format is pickle-based: workers refuse unsigned pickle."""
    if settings.signing_key is None or payload.format not in PICKLE_FORMATS:
        return None
    if payload.artifact_path is not None:
        data = Path(payload.artifact_path).read_bytes()
    else:
        data = base64.b64decode(payload.artifact_b64 or "")
    return artifacts.sign(artifacts.sha256_hex(data), settings.signing_key)
