"""`predq.store_model`: a model upload arriving through the broker, which is not trusted.

Everything a task carries is data, never code (README, "Security"):
- joblib (pickle) bytes are accepted only with a valid HMAC signature by a key of
  PREDQ_SIGNING_KEY, unless the operator set PREDQ_ALLOW_UNSIGNED_PICKLE=1;
- skops bytes are audited against the allow-list before anything is constructed;
- ONNX bytes must open in onnxruntime.
Whatever is accepted is loaded once and must be a model that can serve, before it is
stored. The same upload sent twice (same model name, bytes and run_id), or an upload whose
`request_id` was stored before for that model name (whatever its bytes now), returns the
version stored the first time, with `reused: true`, and promotes at most once.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from celery import Celery

from modelstore import artifacts, formats
from modelstore.db import ModelEvaluationDB
from modelstore.defaults import DEFAULT_MODEL_NAME
from modelstore.errors import ArtifactSignatureError, InvalidInput
from modelstore.settings import Settings
from modelstore.stored import StoredModel
from workers.validation import check_request_id

log = logging.getLogger(__name__)

_LABEL = "uploaded artifact"
_SEED_METRIC_COLUMNS = ("accuracy", "rmse", "r2")


def unexpected(extra: dict[str, Any]) -> str | None:
    if not extra:
        return None
    names = ", ".join(sorted(extra)[:5])
    return f"unexpected argument(s): {names}"


def warn_if_unsafe(settings: Settings) -> None:
    """Logged once at worker start: the opt-out reopens remote code execution."""
    if settings.allow_unsigned_pickle:
        log.warning("PREDQ_ALLOW_UNSIGNED_PICKLE=1: workers accept unsigned joblib (pickle) "
                    "uploads from the broker, so anyone who can write to the broker can run "
                    "code on every worker. Sign uploads (PREDQ_SIGNING_KEY) or use skops/onnx.")


def check_upload_trust(settings: Settings, data: bytes, fmt: str, signature: object) -> bool:
    """A pickle-based upload needs a signature by a key of the workers' ring.

    Returns whether the bytes may be loaded here (signed, or not pickle): an unsigned pickle
    let in by the opt-out is stored but never unpickled at upload time.
    """
    sha = artifacts.sha256_hex(data)
    has_signature = isinstance(signature, str) and bool(signature)
    keys = artifacts.key_ring(settings.signing_key)
    if has_signature and keys:
        artifacts.verify_signature(sha, str(signature), settings.signing_key, _LABEL)
        return True
    if has_signature:
        raise ArtifactSignatureError(
            "signature: workers have no PREDQ_SIGNING_KEY to verify it; refusing the upload "
            "(set the same key on the workers, or send skops/onnx without a signature)")
    if fmt not in formats.PICKLE_FORMATS:
        return True  # needs no key; with one, the store signs the row for the loader
    if keys:
        raise ArtifactSignatureError(
            "signature: a joblib (pickle) upload must carry its HMAC-SHA256 signature by a "
            "key of the workers' PREDQ_SIGNING_KEY (`predq sign FILE`); refusing an unsigned "
            "upload")
    if settings.allow_unsigned_pickle:
        return False
    raise ArtifactSignatureError(
        "refusing an unsigned joblib (pickle) upload: loading pickle runs code, and the "
        "workers have no PREDQ_SIGNING_KEY to check where it came from. Instead: upload with "
        "format='skops' or 'onnx' (CLI: --format skops), or set PREDQ_SIGNING_KEY on workers "
        "and pipeline so uploads are signed, or register directly into the database "
        "(`predq register --direct`)")


def artifact_bytes(settings: Settings, artifact_path: object, artifact_b64: object) -> bytes:
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


def _check_arguments(metrics: object, feature_schema: object, request_id: object,
                     extra: dict[str, Any]) -> None:
    problem = unexpected(extra)
    if problem:
        raise InvalidInput(problem)
    if request_id is not None and (problem := check_request_id(request_id)):
        raise InvalidInput(problem)
    if metrics is not None and not isinstance(metrics, dict):
        raise InvalidInput("metrics: expected an object of name -> number")
    if feature_schema is not None and not isinstance(feature_schema, dict):
        raise InvalidInput("feature_schema: expected an object with 'columns'")


def check_servable(settings: Settings, data: bytes, fmt: str,
                   feature_schema: dict[str, Any] | None) -> None:
    """Load the (already trusted or audited) bytes once: they must be a model that serves."""
    obj = formats.loads(data, fmt, _LABEL, settings.skops_trusted)
    formats.check_servable(obj, feature_schema, _LABEL)


def store_model(app: Celery, settings: Settings, artifact_path: object = None,
                artifact_b64: object = None, model_type: object = None,
                run_id: object = None, metrics: object = None,
                model: object = DEFAULT_MODEL_NAME, version: object = None,
                promote: object = False, feature_schema: object = None,
                signature: object = None, format: object = None,
                request_id: object = None, **extra: Any) -> dict[str, Any]:
    _check_arguments(metrics, feature_schema, request_id, extra)
    fmt = formats.check_format(format)
    data = artifact_bytes(settings, artifact_path, artifact_b64)
    formats.check_bytes_match(data, fmt, _LABEL)
    if check_upload_trust(settings, data, fmt, signature):
        # skops: audited against the allow-list before anything is constructed.
        check_servable(settings, data, fmt, feature_schema)  # type: ignore[arg-type]
    db = ModelEvaluationDB(settings.database_url, signing_key=settings.signing_key)
    stored = _already_stored(db, data, model, run_id, request_id)
    if stored is None:
        seed = {name: (metrics or {}).get(name) for name in _SEED_METRIC_COLUMNS}  # type: ignore[attr-defined]
        stored = db.store_model(run_id, version, model_type, data,  # type: ignore[arg-type]
                                accuracy=seed["accuracy"], rmse=seed["rmse"], r2=seed["r2"],
                                is_production=bool(promote), model_name=model,  # type: ignore[arg-type]
                                metrics=metrics, feature_schema=feature_schema,  # type: ignore[arg-type]
                                describe=False, serialization_format=fmt,
                                reason="predq.store_model promote=True" if promote else None,
                                upload_request_id=request_id)  # type: ignore[arg-type]
    if stored.reused:  # re-sent, or lost a race to its twin
        stored = _promote_once(app, db, stored, promote)
    else:
        _broadcast(app, stored)
    generation = stored.promotion.generation if stored.promotion else None
    return {"model_version": stored.model_version, "sha256": stored.sha256,
            "size_bytes": stored.size_bytes, "generation": generation, "format": fmt,
            "reused": stored.reused}


def _already_stored(db: ModelEvaluationDB, data: bytes, model: object, run_id: object,
                    request_id: object) -> StoredModel | None:
    """A re-sent upload: the version its request id, else its bytes and run, stored."""
    if not isinstance(model, str) or not isinstance(run_id, str):
        return None  # store_model names the bad field
    sha = artifacts.sha256_hex(data)
    stored = db.find_request(model, request_id)  # type: ignore[arg-type]
    if stored is not None and stored.sha256 != sha:
        log.warning("store_model: model %r request_id %r was stored as %s with sha256 %s…; "
                    "returning it, not these different bytes (sha256 %s…)", model, request_id,
                    stored.model_version, stored.sha256[:12], sha[:12])
    stored = stored or db.find_upload(model, sha, run_id, request_id)  # type: ignore[arg-type]
    if stored is not None:
        log.info("store_model: model %r run_id %r is already stored as %s; not storing it "
                 "again", model, run_id, stored.model_version)
    return stored


def _promote_once(app: Celery, db: ModelEvaluationDB, stored: StoredModel,
                  promote: object) -> StoredModel:
    """A re-sent upload with promote=True promotes its version only if it never was."""
    if promote and stored.promotion is None:
        moved = db.set_production_model(stored.model_version, stored.model_name,
                                        reason="predq.store_model promote=True (re-sent)")
        stored = dataclasses.replace(stored, promotion=moved)
        _broadcast(app, stored)
    return stored


def _broadcast(app: Celery, stored: StoredModel) -> None:
    """Every node, this one included, starts converging now rather than at its next poll."""
    if stored.promotion is None:
        return
    app.control.broadcast("predq_promote", reply=False, arguments={
        "model": stored.model_name, "generation": stored.promotion.generation,
        "promoted_at": time.time()})

