"""Production pointer moves. Each call runs inside the caller's single transaction and does
three things together: move the pointer (and the is_production flags), bump the
generation, record the history."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, select, update

from modelstore import artifacts, schema
from modelstore.errors import ArtifactIntegrityError, ModelNotFound, RollbackError

A = schema.model_artifacts
P = schema.production_pointer
H = schema.promotion_history


@dataclass(frozen=True)
class PromotionResult:
    model_name: str
    from_version: str | None
    to_version: str
    generation: int
    action: str
    changed: bool = True
    """False when the version already was production: nothing was written."""


@dataclass(frozen=True)
class Pointer:
    model_name: str
    model_version: str
    artifact_id: int
    generation: int


def lock_model(conn: Connection, model_name: str) -> None:
    """Serialize pointer moves per model name (Postgres); SQLite serializes all writers."""
    if conn.dialect.name == "postgresql":
        key = zlib.crc32(f"predq:promote:{model_name}".encode())
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (key,))


def read_pointer(conn: Connection, model_name: str) -> Pointer | None:
    row = conn.execute(select(P).where(P.c.model_name == model_name)).mappings().first()
    if row is None:
        return None
    return Pointer(row["model_name"], row["model_version"], row["artifact_id"],
                   int(row["generation"]))


def _current_version(conn: Connection, model_name: str) -> tuple[str | None, int]:
    pointer = read_pointer(conn, model_name)
    if pointer is not None:
        return pointer.model_version, pointer.generation
    # A seed-style flag set by raw SQL, with no pointer yet.
    flagged = conn.execute(select(A.c.model_version).where(
        and_(A.c.model_name == model_name, A.c.is_production.is_(True)))).scalar()
    return flagged, 0


def _target(conn: Connection, model_name: str, version: str, signing_key: artifacts.Keys
            ) -> Any:
    row = conn.execute(select(A.c.id, A.c.sha256, A.c.signature).where(
        and_(A.c.model_name == model_name, A.c.model_version == version))).first()
    if row is None:
        raise ModelNotFound(f"model {model_name!r} has no version {version!r}; nothing changed")
    _check_artifact(conn, row, f"{model_name}@{version}", signing_key)
    return row


def _check_artifact(conn: Connection, row: Any, label: str, key: artifacts.Keys) -> None:
    """Refuse to promote a corrupt or badly signed artifact (digest computed server-side)."""
    if conn.dialect.name == "postgresql":
        actual = conn.execute(select(func.encode(func.sha256(A.c.model_binary), "hex")).where(
            A.c.id == row.id)).scalar()
    else:
        blob = conn.execute(select(A.c.model_binary).where(A.c.id == row.id)).scalar()
        actual = artifacts.sha256_hex(blob or b"")
    if row.sha256 is None or actual != row.sha256:
        raise ArtifactIntegrityError(
            f"refusing to promote {label}: stored bytes do not match the recorded sha256 "
            "(corrupt or unrecorded); nothing changed")
    artifacts.verify_signature(row.sha256, row.signature, key, label)


def promote(conn: Connection, model_name: str, version: str, *, action: str,
            by: str | None, reason: str | None, signing_key: artifacts.Keys) -> PromotionResult:
    lock_model(conn, model_name)
    target = _target(conn, model_name, version, signing_key)
    pointer = read_pointer(conn, model_name)
    if pointer is not None and pointer.artifact_id == target.id:
        # Already production: no history row from V to V, no generation bump.
        return PromotionResult(model_name, version, version, pointer.generation, action,
                               changed=False)
    current, generation = _current_version(conn, model_name)
    now = func.current_timestamp()
    conn.execute(update(A).where(and_(A.c.model_name == model_name, A.c.is_production.is_(True),
                                      A.c.id != target.id))
                 .values(is_production=False, updated_at=now))
    conn.execute(update(A).where(A.c.id == target.id).values(
        is_production=True, deployment_date=now, updated_at=now))
    new_generation = generation + 1
    values = {"model_version": version, "artifact_id": target.id,
              "generation": new_generation, "updated_at": now}
    changed = conn.execute(update(P).where(P.c.model_name == model_name).values(**values))
    if changed.rowcount == 0:
        conn.execute(P.insert().values(model_name=model_name, **values))
    conn.execute(H.insert().values(model_name=model_name, from_version=current,
                                   to_version=version, generation=new_generation,
                                   action=action, promoted_by=by, reason=reason))
    return PromotionResult(model_name, current, version, new_generation, action)


def rollback_target(conn: Connection, model_name: str) -> str:
    """The version production held before the current one was promoted (a stack walk)."""
    current, _ = _current_version(conn, model_name)
    if current is None:
        raise RollbackError(f"model {model_name!r} has no production version to roll back from")
    previous = conn.execute(
        select(H.c.from_version).where(and_(H.c.model_name == model_name,
                                            H.c.to_version == current,
                                            H.c.action != "rollback"))
        .order_by(H.c.id.desc()).limit(1)).scalar()
    if previous is None:
        raise RollbackError(f"model {model_name!r}: no production version before {current!r} "
                            "to roll back to; pass a target version")
    return str(previous)


def history(conn: Connection, model_name: str | None, limit: int) -> list[dict[str, Any]]:
    stmt = select(H).order_by(H.c.id.desc()).limit(limit)
    if model_name is not None:
        stmt = stmt.where(H.c.model_name == model_name)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def was_promoted(conn: Connection, model_name: str, version: str) -> PromotionResult | None:
    """The first promotion of `version` (a re-sent upload with promote=True promotes once)."""
    row = conn.execute(select(H).where(and_(H.c.model_name == model_name,
                                            H.c.to_version == version))
                       .order_by(H.c.id).limit(1)).mappings().first()
    if row is None:
        return None
    return PromotionResult(model_name, row["from_version"], version, int(row["generation"]),
                           str(row["action"]))
