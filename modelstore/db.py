"""ModelEvaluationDB: the seed's store API, one transaction per public method.

Database errors are translated once, here, into predq errors that name what was being
done and to which identifiers; unique violations become domain errors.
"""

from __future__ import annotations

import getpass
import math
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from modelstore import (
    artifacts,
    blobs,
    defaults,
    formats,
    monitoring,
    pglog,
    predictions,
    promotion,
    schema,
)
from modelstore.engine import get_engine, redact_url, translate_errors
from modelstore.errors import (
    DuplicateModelVersion,
    InvalidInput,
    ModelNotFound,
    NoProductionModel,
)
from modelstore.predictions import BackfillResult, PredictionRow
from modelstore.promotion import Pointer, PromotionResult
from modelstore.stored import StoredModel, claim_request, find_artifact
from modelstore.versions import free_version

A = schema.model_artifacts
_AUTO_VERSION_TRIES = 5


def default_actor() -> str:
    """Who did it, for the promotion history: PREDQ_ACTOR, else user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return os.environ.get("PREDQ_ACTOR") or f"{user}@{socket.gethostname()}"


def _upsert(conn: Connection, table: Any) -> Any:
    return (postgresql.insert(table) if conn.dialect.name == "postgresql"
            else sqlite.insert(table))


class ModelEvaluationDB:
    """The model registry and prediction log. `with ModelEvaluationDB() as db: ...`

    The URL comes from the argument, else DATABASE_URL. The engine is shared per process;
    `close()` only marks this handle closed.
    """

    def __init__(self, database_url: str | None = None, *, signing_key: artifacts.Keys = None,
                 connect_timeout_s: int = defaults.CONNECT_TIMEOUT_S) -> None:
        self.database_url = (database_url or os.environ.get("DATABASE_URL")
                             or defaults.DEFAULT_DATABASE_URL)
        if signing_key is None:
            signing_key = artifacts.parse_keys(os.environ.get("PREDQ_SIGNING_KEY"))
        self.signing_key = signing_key
        self.engine = get_engine(self.database_url, connect_timeout_s)

    def __repr__(self) -> str:
        return f"ModelEvaluationDB({redact_url(self.database_url)!r})"

    def __enter__(self) -> ModelEvaluationDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the engine is per process (see modelstore.engine)."""

    @contextmanager
    def _tx(self, action: str, **ids: object) -> Iterator[Connection]:
        with translate_errors(action, **ids), self.engine.begin() as conn:
            yield conn

    # -- models ---------------------------------------------------------------------------

    def store_model(self, run_id: str, model_version: str | None, model_type: str,
                    model_binary: bytes, accuracy: float | None = None,
                    rmse: float | None = None, r2: float | None = None,
                    is_production: bool = False, *, model_name: str = defaults.DEFAULT_MODEL_NAME,
                    metrics: Mapping[str, float] | None = None,
                    feature_schema: dict[str, Any] | None = None,
                    describe: bool = True, by: str | None = None,
                    reason: str | None = None,
                    serialization_format: str = artifacts.FORMAT_JOBLIB,
                    upload_request_id: str | None = None) -> StoredModel:
        """Store an artifact (and its run and metrics); with is_production, promote it too.

        A None version gets YYYYMMDD_HHMMSS, suffixed when two land in one second.
        With `describe` and no `feature_schema`, the bytes are loaded once to capture the
        input columns: only do that for bytes this process made (workers pass False).
        `serialization_format` (joblib, skops, onnx) is recorded; the loader dispatches on it.
        With `upload_request_id`, an upload already stored under that id for this model name
        is returned as it is (`reused`, nothing stored or promoted), also when two race.
        """
        _check_text("run_id", run_id, 255)
        _check_text("model_type", model_type, 100)
        _check_text("model_name", model_name, 100)
        if model_version is not None:
            _check_text("model_version", model_version, 50)
        if upload_request_id is not None:
            _check_text("upload_request_id", upload_request_id, 128)
        if not isinstance(model_binary, bytes | bytearray | memoryview) or not model_binary:
            raise InvalidInput("model_binary: expected non-empty bytes")
        data = bytes(model_binary)
        all_metrics = _merge_metrics(accuracy, rmse, r2, metrics)
        sha = artifacts.sha256_hex(data)
        formats.check_format(serialization_format)
        if feature_schema is None and describe:
            feature_schema = _describe_own_bytes(data, serialization_format)
        row = {"run_id": run_id, "model_type": model_type, "model_binary": data,
               "model_size_bytes": len(data), "accuracy_score": accuracy, "rmse_score": rmse,
               "r2_score": r2, "model_name": model_name, "sha256": sha,
               "serialization_format": serialization_format,
               "signature": artifacts.sign(sha, self.signing_key) if self.signing_key else None,
               "feature_schema": feature_schema, "upload_request_id": upload_request_id}

        # An auto version lost to a concurrent store in the same second: pick the next suffix.
        tries = 1 if model_version is not None else _AUTO_VERSION_TRIES
        for n in range(tries):
            try:
                return self._store_once(row, model_version, all_metrics, is_production,
                                        by or default_actor(), reason)
            except DuplicateModelVersion:
                if n == tries - 1:
                    raise
        raise AssertionError("unreachable")

    def _store_once(self, row: dict[str, Any], requested: str | None,
                    metrics: dict[str, float], is_production: bool, by: str,
                    reason: str | None) -> StoredModel:
        name = row["model_name"]
        version = requested
        try:
            with self._tx("storing model", model_name=name, model_version=requested,
                          run_id=row["run_id"]) as conn:
                version = requested or free_version(conn, name)
                conn.execute(_upsert(conn, schema.model_runs).values(
                    run_id=row["run_id"], model_name=name).on_conflict_do_nothing())
                artifact_id = conn.execute(A.insert().values(model_version=version, **row)
                                           .returning(A.c.id)).scalar_one()
                _write_metrics(conn, row["run_id"], metrics)
                result = None
                if is_production:
                    result = promotion.promote(conn, name, version, action="store", by=by,
                                               reason=reason, signing_key=self.signing_key)
        except IntegrityError as exc:
            # The unique (model_name, upload_request_id) index: another copy of this upload won.
            earlier = self.find_request(name, row["upload_request_id"])
            if earlier is not None:
                return earlier
            raise DuplicateModelVersion(
                f"model {name!r} version {version!r} (run_id {row['run_id']!r}) is already "
                "stored; choose another version") from exc
        return StoredModel(name, version, row["sha256"], row["model_size_bytes"], artifact_id,
                           result)

    def find_upload(self, model_name: str, sha256: str, run_id: str,
                    upload_request_id: str | None = None) -> StoredModel | None:
        """The stored artifact with exactly these bytes for this run, if any (an upload sent
        twice); its promotion is set when the version was ever promoted. An
        `upload_request_id` is recorded on it when it has none, so that this id returns it
        from now on (the first answer for an id stays its answer)."""
        with self._tx("looking up an upload", model_name=model_name, run_id=run_id) as conn:
            found = find_artifact(conn, model_name, A.c.sha256 == sha256, A.c.run_id == run_id)
            if found is None or upload_request_id is None or claim_request(
                    conn, found.artifact_id, upload_request_id):
                return found
        return self.find_request(model_name, upload_request_id)  # a twin claimed it first

    def find_request(self, model_name: str, upload_request_id: str | None
                     ) -> StoredModel | None:
        """The artifact the upload with this request id stored for this model name, if any."""
        if upload_request_id is None:
            return None
        with self._tx("looking up an upload request", model_name=model_name) as conn:
            return find_artifact(conn, model_name, A.c.upload_request_id == upload_request_id)

    def record_metrics(self, run_id: str, metrics: Mapping[str, float],
                       metric_type: str = "validation") -> None:
        """Upsert metrics of a run in long format (run_id, name, value, type)."""
        clean = _merge_metrics(None, None, None, metrics)
        with self._tx("recording metrics", run_id=run_id) as conn:
            conn.execute(_upsert(conn, schema.model_runs).values(run_id=run_id)
                         .on_conflict_do_nothing())
            _write_metrics(conn, run_id, clean, metric_type)

    def get_model(self, model_version: str, model_name: str | None = None
                  ) -> dict[str, Any] | None:
        """The artifact row as a dict, model_binary as bytes (unverified), or None if unknown."""
        conds = [A.c.model_version == model_version]
        if model_name is not None:
            conds.append(A.c.model_name == model_name)
        cols = [c for c in A.c if c.name != "model_binary"]
        with self._tx("reading model", model_version=model_version) as conn:
            row = conn.execute(select(*cols).where(and_(*conds)).order_by(A.c.id.desc())
                               .limit(1)).mappings().first()
            if row is None:
                return None
            # The fast binary fetch, not the hex-encoded BYTEA text (see blobs.py).
            return {**row, "model_binary": blobs.fetch_bytes(conn, row["id"])}

    def list_models(self, limit: int = 10, model_name: str | None = None
                    ) -> list[dict[str, Any]]:
        """Artifact rows, newest first, without model_binary (sizes are in model_size_bytes)."""
        cols = [c for c in A.c if c.name != "model_binary"]
        stmt = select(*cols).order_by(A.c.created_at.desc(), A.c.id.desc()).limit(int(limit))
        if model_name is not None:
            stmt = stmt.where(A.c.model_name == model_name)
        with self._tx("listing models", limit=limit) as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def model_names(self) -> list[str]:
        """Every stored model name, sorted (for "known models: ..." in messages)."""
        with self._tx("listing model names") as conn:
            return sorted(conn.execute(select(A.c.model_name).distinct()).scalars())

    def feature_schema(self, model_name: str = defaults.DEFAULT_MODEL_NAME,
                       model_version: str | None = None) -> tuple[str, dict[str, Any] | None]:
        """(version, recorded feature schema) of `model_version`, or of production."""
        with self._tx("reading feature schema", model_name=model_name) as conn:
            if model_version is None:
                pointer = promotion.read_pointer(conn, model_name)
                if pointer is None:
                    raise NoProductionModel(f"model {model_name!r} has no production version")
                meta = blobs.artifact_meta(conn, None, artifact_id=pointer.artifact_id)
            else:
                meta = blobs.artifact_meta(conn, model_name, model_version)
            if meta is None:
                raise ModelNotFound(f"model {model_name!r} has no version {model_version!r}")
            return meta.model_version, meta.feature_schema

    # -- promotion ------------------------------------------------------------------------

    def set_production_model(self, model_version: str,
                             model_name: str = defaults.DEFAULT_MODEL_NAME, *,
                             by: str | None = None, reason: str | None = None
                             ) -> PromotionResult:
        """Make a version the production one: pointer, generation and history together."""
        return self._move(model_name, model_version, "promote", by, reason)

    def rollback_production_model(self, target_version: str | None = None,
                                  model_name: str = defaults.DEFAULT_MODEL_NAME, *,
                                  by: str | None = None, reason: str | None = None
                                  ) -> PromotionResult:
        """Go back to `target_version`, or to the version before the current one."""
        return self._move(model_name, target_version, "rollback", by, reason)

    def _move(self, name: str, version: str | None, action: str, by: str | None,
              reason: str | None) -> PromotionResult:
        with self._tx(f"{action} of model", model_name=name, model_version=version) as conn:
            promotion.lock_model(conn, name)
            target = version or promotion.rollback_target(conn, name)
            return promotion.promote(conn, name, target, action=action,
                                     by=by or default_actor(), reason=reason,
                                     signing_key=self.signing_key)

    def ping(self) -> None:
        """A round trip to the database; raises DatabaseUnavailable when it is down."""
        with self._tx("pinging the database") as conn:
            conn.exec_driver_sql("SELECT 1")

    def production_pointer(self, model_name: str = defaults.DEFAULT_MODEL_NAME
                           ) -> Pointer | None:
        """The production version and generation: the cheap check serving processes poll."""
        with self._tx("reading production pointer", model_name=model_name) as conn:
            return promotion.read_pointer(conn, model_name)

    def promotion_history(self, model_name: str | None = None, limit: int = 50
                          ) -> list[dict[str, Any]]:
        """Promotions and rollbacks, newest first: who, when, from, to, why."""
        with self._tx("reading promotion history", model_name=model_name) as conn:
            return promotion.history(conn, model_name, limit)

    # -- predictions ----------------------------------------------------------------------

    def store_prediction(self, model_version: str, input_features: Mapping[str, Any],
                         predicted_value: float, actual_value: float | None = None,
                         confidence_score: float | None = None, *,
                         request_id: str | None = None,
                         model_name: str = defaults.DEFAULT_MODEL_NAME) -> str:
        """Log one prediction; returns its request_id (made up when not given)."""
        rid = request_id or str(uuid.uuid4())
        row: PredictionRow = {"request_id": rid, "model_version": model_version,
                              "input_features": input_features,
                              "predicted_value": predicted_value, "model_name": model_name,
                              "actual_value": actual_value,
                              "confidence_score": confidence_score}
        self.store_predictions([row])
        return rid

    def store_predictions(self, rows: Sequence[Mapping[str, Any]],
                          deadline_s: float | None = None) -> int:
        """The bulk path: one atomic statement or transaction (multi-row VALUES, or COPY
        from COPY_THRESHOLD_ROWS rows), request_id dedup.

        Returns how many rows were new; rows whose request_id is already logged are skipped.
        On Postgres it runs on the process's log connections (modelstore.pglog).
        """
        if not rows:
            return 0
        if self.engine.dialect.name == "postgresql":
            tuples = predictions.row_tuples(rows)
            with translate_errors("logging predictions", rows=len(rows)):
                return pglog.log_connections(self.engine).write(tuples, deadline_s)
        with self._tx("logging predictions", rows=len(rows)) as conn:
            return predictions.write_predictions(conn, rows)

    def abort_stalled_writes(self, limit_s: float) -> int:
        """Cut off prediction-log writes blocked longer than `limit_s` (a silent link):
        they fail with DatabaseUnavailable at once. Returns how many were cut off."""
        if self.engine.dialect.name != "postgresql":
            return 0
        return pglog.log_connections(self.engine).abort_stalled(limit_s)

    def backfill_actuals(self, actuals: Mapping[str, Any] | Iterable[Any]) -> BackfillResult:
        """Set actual values by request_id; reports the ids it did not know and bad items."""
        good, bad = predictions.normalize_actuals(actuals)
        with self._tx("backfilling actuals", items=len(good)) as conn:
            updated, unknown = predictions.backfill(conn, good)
        return BackfillResult(updated, unknown, bad)

    # -- monitoring -----------------------------------------------------------------------

    def prediction_stats(self, model_name: str | None = None,
                         since: datetime | None = None) -> list[dict[str, Any]]:
        """Per version: predictions, labelled rows, label coverage, MAE and RMSE."""
        with self._tx("reading prediction stats", model_name=model_name) as conn:
            return monitoring.version_stats(conn, model_name, since)

    def daily_prediction_counts(self, days: int = 30) -> list[dict[str, Any]]:
        """Predictions per version per day for the last `days` days."""
        with self._tx("reading daily counts", days=days) as conn:
            return monitoring.daily_counts(conn, days)

    def model_sizes(self) -> list[dict[str, Any]]:
        """Per model type: count, total and average artifact size."""
        with self._tx("reading model sizes") as conn:
            return monitoring.model_sizes(conn)


def _check_text(field: str, value: object, limit: int) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidInput(f"{field}: expected a non-empty string of at most {limit} "
                           f"characters, got {value!r:.60}")


def _merge_metrics(accuracy: float | None, rmse: float | None, r2: float | None,
                   extra: Mapping[str, float] | None) -> dict[str, float]:
    merged: dict[str, Any] = {"accuracy": accuracy, "rmse": rmse, "r2": r2}
    merged.update(extra or {})
    out: dict[str, float] = {}
    for name, value in merged.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise InvalidInput(f"metrics.{name}: expected a finite number, got {value!r:.60}")
        out[str(name)] = float(value)
    return out


def _write_metrics(conn: Connection, run_id: str, metrics: dict[str, float],
                   metric_type: str = "validation") -> None:
    if not metrics:
        return
    stmt = _upsert(conn, schema.model_metrics)
    rows = [{"run_id": run_id, "metric_name": k, "metric_value": v, "metric_type": metric_type}
            for k, v in metrics.items()]
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["run_id", "metric_name", "metric_type"],
        set_={"metric_value": stmt.excluded.metric_value}), rows)


def _describe_own_bytes(data: bytes, fmt: str) -> dict[str, Any] | None:
    """Capture the feature schema from the caller's own artifact (trusted: they just made it)."""
    try:
        return artifacts.describe_features(formats.loads(data, fmt, "own artifact"))
    except Exception:  # noqa: BLE001 - an opaque artifact simply has no recorded schema
        return None
