"""The wire contract's tasks. JSON in, JSON out; names are the public API."""

from __future__ import annotations

import base64
import binascii
import logging
import time
from pathlib import Path
from typing import Any

from celery import Celery, Task

from modelstore import artifacts
from modelstore.db import ModelEvaluationDB
from modelstore.defaults import DEFAULT_MODEL_NAME
from modelstore.errors import (
    ArtifactError,
    ArtifactSignatureError,
    DatabaseUnavailable,
    DuplicateModelVersion,
    InvalidInput,
    ModelNotFound,
)
from modelstore.settings import Settings
from workers.state import get_state

log = logging.getLogger(__name__)

RESULT_TIMEOUT_S = 120.0
_DOMAIN_ERRORS = (InvalidInput, DuplicateModelVersion, ArtifactError, ModelNotFound)


def _unexpected(extra: dict[str, Any]) -> str | None:
    if not extra:
        return None
    names = ", ".join(sorted(extra)[:5])
    return f"unexpected argument(s): {names}"


def register_tasks(app: Celery, settings: Settings) -> None:
    @app.task(name="predq.ping", typing=False)
    def ping(*_args: object, **_kwargs: object) -> str:
        """A health check; also the benchmarks' no-op baseline through the same config."""
        return "pong"

    @app.task(name="predq.predict", bind=True, typing=False)
    def predict(self: Task, features: object = None, model: object = DEFAULT_MODEL_NAME,
                request_id: object = None, version: object = None, *args: object,
                request_time: object = None, **extra: Any) -> dict[str, Any]:
        # Default id = the task id: stable across redelivery, so the log dedups it.
        rid = request_id if request_id is not None else self.request.id
        problem = _unexpected(extra) or (f"unexpected positional argument(s): {len(args)}"
                                         if args else None)
        if problem:
            return {"request_id": rid if isinstance(rid, str) else None, "error": problem}
        return get_state(settings).predict_one(features, rid, model, version,  # type: ignore[arg-type]
                                               RESULT_TIMEOUT_S, request_time)

    @app.task(name="predq.predict_batch", bind=True, typing=False)
    def predict_batch(self: Task, rows: object = None, model: object = DEFAULT_MODEL_NAME,
                      request_ids: object = None, version: object = None, *args: object,
                      request_time: object = None, **extra: Any) -> dict[str, Any]:
        problem = _unexpected(extra) or _batch_problem(rows, request_ids, settings)
        if problem:
            return {"error": problem, "results": []}
        assert isinstance(rows, list)
        ids = request_ids if isinstance(request_ids, list) else [
            f"{self.request.id}:{i}" for i in range(len(rows))]
        return get_state(settings).predict_rows(rows, ids, model, version, request_time)

    @app.task(name="predq.store_model", bind=True, typing=False)
    def store_model(self: Task, **kwargs: Any) -> dict[str, Any]:
        try:
            return _store_model(app, settings, **kwargs)
        except _DOMAIN_ERRORS as exc:
            return {"error": str(exc)}
        except DatabaseUnavailable as exc:
            raise self.retry(exc=exc, countdown=2, max_retries=5) from exc

    @app.task(name="predq.backfill_actuals", bind=True, typing=False)
    def backfill_actuals(self: Task, actuals: object = None, **extra: Any) -> dict[str, Any]:
        problem = _unexpected(extra)
        if problem or not isinstance(actuals, list | dict):
            return {"error": problem or "actuals: expected a list of {request_id, actual_value}"}
        try:
            result = ModelEvaluationDB(settings.database_url).backfill_actuals(actuals)
        except DatabaseUnavailable as exc:
            raise self.retry(exc=exc, countdown=2, max_retries=5) from exc
        return {"updated": result.updated, "unknown": result.unknown, "invalid": result.invalid}


def _batch_problem(rows: object, request_ids: object, settings: Settings) -> str | None:
    if not isinstance(rows, list):
        return f"rows: expected a list of feature objects, got {type(rows).__name__}"
    if not rows:
        return "rows: empty batch"
    if len(rows) > settings.max_rows_per_task:
        return (f"rows: {len(rows)} rows exceed the cap of {settings.max_rows_per_task} per "
                "task (PREDQ_MAX_ROWS_PER_TASK); split the batch")
    if request_ids is not None and (not isinstance(request_ids, list)
                                    or len(request_ids) != len(rows)):
        return "request_ids: expected a list as long as rows"
    return None


def _check_upload_signature(settings: Settings, data: bytes, signature: object) -> None:
    """With a signing key, an upload must arrive signed by whoever holds the key (the
    training pipeline). Signing whatever arrives would let anyone who can write to the
    broker have every worker unpickle (run) their bytes."""
    if settings.signing_key is None:
        return
    if not isinstance(signature, str) or not signature:
        raise ArtifactSignatureError(
            "signature: workers have PREDQ_SIGNING_KEY set, so predq.store_model needs the "
            "artifact's HMAC-SHA256 signature (modelstore.artifacts.sign(sha256, key)); "
            "refusing an unsigned upload")
    artifacts.verify_signature(artifacts.sha256_hex(data), signature, settings.signing_key,
                               "uploaded artifact")


def _artifact_bytes(settings: Settings, artifact_path: object, artifact_b64: object) -> bytes:
    if (artifact_path is None) == (artifact_b64 is None):
        raise InvalidInput("artifact_path / artifact_b64: give exactly one")
    if artifact_path is not None:
        if not isinstance(artifact_path, str):
            raise InvalidInput("artifact_path: expected a string path")
        try:
            return Path(artifact_path).read_bytes()
        except OSError as exc:
            raise InvalidInput(f"artifact_path: cannot read {artifact_path!r}: "
                               f"{exc.strerror}") from exc
    if not isinstance(artifact_b64, str):
        raise InvalidInput("artifact_b64: expected a base64 string")
    if len(artifact_b64) > settings.max_artifact_b64_bytes:
        raise InvalidInput(f"artifact_b64: {len(artifact_b64)} bytes exceed the cap of "
                           f"{settings.max_artifact_b64_bytes} (PREDQ_MAX_ARTIFACT_B64_BYTES); "
                           "pass artifact_path to a shared file instead")
    try:
        return base64.b64decode(artifact_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"artifact_b64: not valid base64: {exc}") from exc


def _store_model(app: Celery, settings: Settings, artifact_path: object = None,
                 artifact_b64: object = None, model_type: object = None,
                 run_id: object = None, metrics: object = None,
                 model: object = DEFAULT_MODEL_NAME, version: object = None,
                 promote: object = False, feature_schema: object = None,
                 signature: object = None, **extra: Any) -> dict[str, Any]:
    problem = _unexpected(extra)
    if problem:
        raise InvalidInput(problem)
    if metrics is not None and not isinstance(metrics, dict):
        raise InvalidInput("metrics: expected an object of name -> number")
    if feature_schema is not None and not isinstance(feature_schema, dict):
        raise InvalidInput("feature_schema: expected an object with 'columns'")
    data = _artifact_bytes(settings, artifact_path, artifact_b64)
    _check_upload_signature(settings, data, signature)
    db = ModelEvaluationDB(settings.database_url, signing_key=settings.signing_key)
    # describe=False: never unpickle uploaded bytes in a worker at store time.
    stored = db.store_model(run_id, version, model_type, data,  # type: ignore[arg-type]
                            is_production=bool(promote), model_name=model,  # type: ignore[arg-type]
                            metrics=metrics, feature_schema=feature_schema, describe=False,
                            reason="predq.store_model promote=True" if promote else None)
    generation = stored.promotion.generation if stored.promotion else None
    if generation is not None:
        # Every node, this one included, starts converging now rather than at its next poll.
        app.control.broadcast("predq_promote", reply=False, arguments={
            "model": stored.model_name, "generation": generation, "promoted_at": time.time()})
    return {"model_version": stored.model_version, "sha256": stored.sha256,
            "size_bytes": stored.size_bytes, "generation": generation}
