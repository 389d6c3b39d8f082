"""A stored artifact as the store reports it, and finding one an upload stored before.

An upload is stored once: the same model name, bytes and run, or the same upload request id
(model_artifacts.upload_request_id, unique per model name), finds the first one's row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

from modelstore import promotion, schema
from modelstore.promotion import PromotionResult

A = schema.model_artifacts


@dataclass(frozen=True)
class StoredModel:
    model_name: str
    model_version: str
    sha256: str
    size_bytes: int
    artifact_id: int
    promotion: PromotionResult | None = None
    reused: bool = False
    """True when this upload was stored before (same request id, or same bytes and run)."""


def find_artifact(conn: Connection, model_name: str, *conds: Any) -> StoredModel | None:
    """The first artifact of `model_name` matching `conds`, as a reused StoredModel."""
    row = conn.execute(select(A.c.id, A.c.model_version, A.c.model_size_bytes, A.c.sha256)
                       .where(A.c.model_name == model_name, *conds)
                       .order_by(A.c.id).limit(1)).first()
    if row is None:
        return None
    promoted = promotion.was_promoted(conn, model_name, row.model_version)
    return StoredModel(model_name, row.model_version, str(row.sha256),
                       int(row.model_size_bytes or 0), row.id, promoted, reused=True)


def claim_request(conn: Connection, artifact_id: int, request_id: str) -> bool:
    """Record `request_id` on an artifact that has none, so that a later upload with this id
    finds it whatever its bytes. False when another artifact took the id first."""
    try:
        with conn.begin_nested():
            conn.execute(update(A).where(A.c.id == artifact_id,
                                         A.c.upload_request_id.is_(None))
                         .values(upload_request_id=request_id))
    except IntegrityError:
        return False
    return True
