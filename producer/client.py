"""PredqClient: applications predict, training pipelines register, ops promote and watch.

Tasks are sent by name (the wire contract in README.md); nothing of `workers` is imported.
The Celery app is built on first use, never at import.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from amqp.exceptions import AMQPError, MessageNacked
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from modelstore import defaults
from modelstore.db import ModelEvaluationDB, default_actor
from modelstore.engine import redact_url
from modelstore.errors import InvalidInput
from modelstore.formats import PICKLE_FORMATS
from modelstore.promotion import PromotionResult
from modelstore.settings import Settings
from producer import payloads, transport
from producer.errors import (
    BrokerUnavailable,
    PredictionError,
    RequestRejected,
    ResultTimeout,
    TaskFailed,
)
from producer.progress import progress_bar
from producer.serving import (
    NodeState,
    PromoteReport,
    ServingRow,
    merge_replies,
    serving_rows,
    split_confirmed,
)

PREDICT = "predq.predict"
PREDICT_BATCH = "predq.predict_batch"
STORE_MODEL = "predq.store_model"
BACKFILL = "predq.backfill_actuals"
DEFAULT_MODEL = defaults.DEFAULT_MODEL_NAME
FILESYSTEM_TRANSPORT = "producer.fs_transport:Transport"
# AMQPError: a channel or connection the broker closed; MessageNacked: a publish the broker
# refused to confirm (confirm_publish). Both mean "not accepted": never silently dropped.
_SEND_ERRORS = (KombuOperationalError, RedisError, OSError, AMQPError, MessageNacked)
_POLL_S = 0.1
_CHUNK_ROW = re.compile(r"^rows\[(\d+)\]")
_DISCOVERY_S = 0.5
"""How long a promote collects first replies: broadcasts cannot know how many nodes exist."""


class PredqClient:
    """`with PredqClient() as client: client.predict({...})`. Settings default to the env."""

    def __init__(self, settings: Settings | None = None, *, app: Any | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._app = app
        self._own_app = app is None
        self._reachable = app is not None  # an injected app is the caller's to check
        self._workers_seen = app is not None
        self._db: ModelEvaluationDB | None = None

    def __enter__(self) -> PredqClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def app(self) -> Any:
        """The producer's Celery app, built on first use."""
        if self._app is None:
            app = Celery("predq-producer", set_as_current=False)
            app.conf.update(self.settings.celery_config())
            app.conf.update(transport.client_deadlines(self.settings))
            if app.conf.broker_url == "filesystem://":
                # kombu's stock filesystem transport races (see producer.fs_transport);
                # the host part only silences kombu's "no hostname" warning.
                app.conf.broker_transport = FILESYSTEM_TRANSPORT
                app.conf.broker_url = "filesystem://localhost/"
            self._app = app
        return self._app

    @property
    def db(self) -> ModelEvaluationDB:
        """The model store, for the database half of promote, rollback and direct writes."""
        if self._db is None:
            self._db = ModelEvaluationDB(self.settings.database_url,
                                         signing_key=self.settings.signing_key,
                                         connect_timeout_s=self.settings.connect_timeout_s)
        return self._db

    def close(self) -> None:
        if self._app is not None and self._own_app:
            self._app.close()
            self._app = None

    # -- applications ---------------------------------------------------------------------

    def predict(self, features: Mapping[str, Any], model: str = DEFAULT_MODEL,
                request_id: str | None = None, timeout: float = 30.0,
                version: str | None = None) -> dict[str, Any]:
        """One prediction: {request_id, model_version, model_sha256, prediction, confidence}.

        Raises PredictionError with the worker's message when the input is refused.
        """
        if not isinstance(features, Mapping):
            raise InvalidInput(f"features: expected a dict, got {type(features).__name__}")
        rid = request_id or payloads.new_request_id()
        result = self._send(PREDICT, payloads.predict_kwargs(dict(features), model, rid, version))
        value = self._wait(result, timeout, f"predict request_id={rid!r}")
        if not isinstance(value, dict):
            raise TaskFailed(f"predict request_id={rid!r}: unexpected result {value!r:.100}")
        if "error" in value:
            raise PredictionError(f"request {rid}: {value['error']}", rid)
        return value

    def predict_many(self, rows: Sequence[Mapping[str, Any]] | pd.DataFrame,
                     chunk_size: int = 1000, model: str = DEFAULT_MODEL,
                     timeout: float = 60.0, progress: bool | None = None,
                     request_ids: Sequence[str | None] | None = None,
                     version: str | None = None) -> list[dict[str, Any]]:
        """Predict many rows as `predict_batch` chunks; results come back in input order.

        Each result is {request_id, model_version, model_sha256, prediction, confidence} or
        {request_id, error} for a refused row. `timeout` bounds the wait for each chunk.
        """
        items = payloads.to_rows(rows)
        ids = payloads.request_ids_for(len(items), request_ids)
        self._check_chunk_size(chunk_size)
        sent = [(start, stop, self._send(PREDICT_BATCH, payloads.columnar_kwargs(
                    items[start:stop], ids[start:stop], model, version)))
                for start, stop in payloads.chunks(len(items), chunk_size)]
        out: list[dict[str, Any]] = []
        with progress_bar(len(items), "predicting", progress) as advance:
            for start, stop, result in sent:
                what = f"predict_batch rows {start}-{stop - 1}"
                out.extend(_batch_results(self._wait(result, timeout, what), ids[start:stop],
                                          what, offset=start))
                advance(stop - start)
        return out

    def send(self, features_or_rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]
             | pd.DataFrame, model: str = DEFAULT_MODEL,
             request_ids: Sequence[str | None] | None = None, chunk_size: int = 1000,
             version: str | None = None) -> list[str]:
        """Fire and forget: enqueue and return the request_ids (results are not stored)."""
        if isinstance(features_or_rows, Mapping):
            rid = payloads.request_ids_for(1, request_ids)[0]
            kwargs = payloads.predict_kwargs(dict(features_or_rows), model, rid, version)
            self._send(PREDICT, kwargs, ignore_result=True)
            return [rid]
        items = payloads.to_rows(features_or_rows)
        ids = payloads.request_ids_for(len(items), request_ids)
        self._check_chunk_size(chunk_size)
        for start, stop in payloads.chunks(len(items), chunk_size):
            kwargs = payloads.columnar_kwargs(items[start:stop], ids[start:stop], model, version)
            self._send(PREDICT_BATCH, kwargs, ignore_result=True)
        return ids

    # -- training pipelines ---------------------------------------------------------------

    def register_model(self, artifact: object | str | Path, model_type: str, run_id: str,
                       metrics: Mapping[str, float] | None = None, promote: bool = False,
                       model: str = DEFAULT_MODEL, version: str | None = None,
                       direct: bool | None = None, timeout: float = 300.0,
                       format: str | None = None, sample: Any = None,
                       request_id: str | None = None) -> str:
        """Store a model (an object, or a joblib/skops/onnx file path); return its version.

        direct=True writes to the database from here; False sends `predq.store_model`
        (a path when workers share this filesystem, else base64 under the size cap);
        None sends the task when the artifact can travel and the workers will take it
        (skops, onnx, or joblib signed with PREDQ_SIGNING_KEY), and writes directly otherwise.
        `format`: joblib (default for objects; signed with PREDQ_SIGNING_KEY when set,
        which workers require for pickle), skops (needs no key), or onnx (converts the
        model with skl2onnx and checks parity on `sample`, a DataFrame of input rows).
        A file's format defaults to what its bytes are.
        `request_id` makes the upload idempotent: sent again (a retry, a redelivery), the
        version stored the first time under it for `model` is returned, promoted at most once.
        """
        clean = payloads.check_metrics(metrics)
        fmt = payloads.artifact_format(artifact, format)
        if direct is None and fmt in PICKLE_FORMATS and self.settings.signing_key is None:
            # Workers refuse unsigned pickle from the broker; the database is trusted.
            direct = True
        if direct:
            return self._store_direct(artifact, model_type, run_id, clean, promote, model,
                                      version, fmt, sample, request_id)
        with transport.artifact_for_task(artifact, self.settings, fmt, sample) as payload:
            if payload is None and direct is None:
                return self._store_direct(artifact, model_type, run_id, clean, promote,
                                          model, version, fmt, sample, request_id)
            if payload is None:
                raise InvalidInput(transport.too_big_message(artifact, self.settings))
            kwargs = {"artifact_path": payload.artifact_path,
                      "artifact_b64": payload.artifact_b64, "model_type": model_type,
                      "run_id": run_id, "metrics": clean, "model": model, "version": version,
                      "promote": promote, "feature_schema": payload.feature_schema,
                      "signature": transport.upload_signature(payload, self.settings),
                      "format": fmt}
            if request_id is not None:  # older workers refuse an argument they do not know
                kwargs["request_id"] = request_id
            value = self._wait(self._send(STORE_MODEL, kwargs), timeout,
                               f"store_model run_id={run_id!r}")
        if isinstance(value, dict) and value.get("error"):
            raise RequestRejected(f"store_model run_id={run_id!r}: {value['error']}")
        if not isinstance(value, dict) or not value.get("model_version"):
            raise TaskFailed(f"store_model run_id={run_id!r}: worker answered {value!r:.200}")
        return str(value["model_version"])

    def _store_direct(self, artifact: object, model_type: str, run_id: str,
                      metrics: dict[str, float], promote: bool, model: str,
                      version: str | None, fmt: str, sample: Any,
                      request_id: str | None) -> str:
        data, feature_schema = payloads.artifact_bytes(artifact, fmt, sample)
        # The seed's own columns too, so `list_models()` shows them as the seed guide does.
        stored = self.db.store_model(run_id, version, model_type, data,
                                     accuracy=metrics.get("accuracy"), rmse=metrics.get("rmse"),
                                     r2=metrics.get("r2"), metrics=metrics,
                                     is_production=promote, model_name=model,
                                     feature_schema=feature_schema, describe=False,
                                     serialization_format=fmt, upload_request_id=request_id)
        if stored.reused and promote and stored.promotion is None:
            self.db.set_production_model(stored.model_version, model, by=default_actor(),
                                         reason="register_model promote=True (re-sent)")
        return stored.model_version

    # -- ops ------------------------------------------------------------------------------

    def promote(self, version: str, model: str = DEFAULT_MODEL, timeout: float = 10.0,
                reason: str | None = None) -> PromoteReport:
        """Move production to `version` in the database, broadcast, and wait (up to
        `timeout` s) until every process of every replying node serves it."""
        moved = self.db.set_production_model(version, model, by=default_actor(),
                                             reason=reason)
        return self._confirm(moved, timeout)

    def rollback(self, to: str | None = None, model: str = DEFAULT_MODEL,
                 timeout: float = 10.0, reason: str | None = None) -> PromoteReport:
        """Go back to `to`, or to the previous production version; confirmed like promote."""
        moved = self.db.rollback_production_model(to, model, by=default_actor(),
                                                  reason=reason)
        return self._confirm(moved, timeout)

    def reload(self, model: str | None = None, timeout: float = 1.0) -> list[ServingRow]:
        """Ask every node to drop its caches and reload production; returns their replies."""
        replies = self._broadcast("predq_reload", {"model": model}, timeout)
        return serving_rows(merge_replies(replies))

    def serving(self, model: str | None = None, timeout: float = 1.0) -> list[ServingRow]:
        """What each process of each replying node serves (`model` filters)."""
        replies = self._broadcast("predq_serving", {}, timeout)
        return serving_rows(merge_replies(replies), model)

    def backfill(self, actuals: Mapping[str, float] | str | Path, chunk_size: int = 5000,
                 timeout: float = 60.0) -> dict[str, Any]:
        """Record actual values by request_id (a mapping, or a request_id,actual_value CSV).

        Returns {"updated": int, "unknown": [request_id], "invalid": {id: message}}.
        """
        if isinstance(actuals, str | Path):
            good, invalid = payloads.read_actuals_csv(Path(actuals))
        else:
            good, invalid = payloads.numeric_actuals(actuals)
        items = [{"request_id": rid, "actual_value": value} for rid, value in good.items()]
        totals: dict[str, Any] = {"updated": 0, "unknown": [], "invalid": dict(invalid)}
        sent = [self._send(BACKFILL, {"actuals": items[start:stop]})
                for start, stop in payloads.chunks(len(items), chunk_size)]
        for result in sent:
            value = self._wait(result, timeout, "backfill_actuals")
            if not isinstance(value, dict):
                raise TaskFailed(f"backfill_actuals: unexpected result {value!r:.100}")
            if value.get("error"):
                raise RequestRejected(f"backfill_actuals: {value['error']}")
            totals["updated"] += int(value.get("updated") or 0)
            totals["unknown"].extend(value.get("unknown") or [])
            totals["invalid"].update(value.get("invalid") or {})
        return totals

    # -- plumbing -------------------------------------------------------------------------

    def _confirm(self, moved: PromotionResult, timeout: float) -> PromoteReport:
        started = time.monotonic()
        if not moved.changed:
            return PromoteReport(moved.model_name, moved.action, moved.from_version,
                                 moved.to_version, moved.generation, changed=False)
        deadline = started + timeout
        args = {"model": moved.model_name, "generation": moved.generation,
                "promoted_at": time.time()}
        try:
            nodes: dict[str, NodeState] = merge_replies(
                self._broadcast("predq_promote", args, min(_DISCOVERY_S, timeout)))
        except BrokerUnavailable as exc:
            # The database moved: say so, and how workers converge without the broadcast.
            return PromoteReport(moved.model_name, moved.action, moved.from_version,
                                 moved.to_version, moved.generation,
                                 elapsed_s=time.monotonic() - started,
                                 broadcast_error=str(exc))
        confirmed, unconfirmed, idle = self._split(nodes, moved)
        while nodes and unconfirmed and time.monotonic() < deadline:
            time.sleep(_POLL_S)
            wait = max(min(_DISCOVERY_S, deadline - time.monotonic()), 0.05)
            merge_replies(self._broadcast("predq_serving", {}, wait, limit=len(nodes)), nodes)
            confirmed, unconfirmed, idle = self._split(nodes, moved)
        return PromoteReport(moved.model_name, moved.action, moved.from_version,
                             moved.to_version, moved.generation, sorted(nodes), confirmed,
                             unconfirmed, idle, time.monotonic() - started)

    @staticmethod
    def _split(nodes: dict[str, NodeState], moved: PromotionResult
               ) -> tuple[list[ServingRow], list[ServingRow], list[ServingRow]]:
        rows = serving_rows(nodes, moved.model_name)
        return split_confirmed(rows, moved.to_version, moved.generation)

    def _check_chunk_size(self, chunk_size: int) -> None:
        cap = self.settings.max_rows_per_task
        if not 0 < chunk_size <= cap:
            raise InvalidInput(f"chunk_size: must be between 1 and {cap} "
                               f"(PREDQ_MAX_ROWS_PER_TASK), got {chunk_size}")

    def _ensure_reachable(self) -> None:
        """Fail fast, naming the URL, instead of letting Celery retry for many seconds."""
        if self._reachable:
            return
        transport.check_reachable(self.app, self.settings)
        self._reachable = True

    def _send(self, name: str, kwargs: dict[str, Any], ignore_result: bool = False) -> Any:
        self._ensure_reachable()
        try:
            return self.app.send_task(name, kwargs=kwargs, ignore_result=ignore_result)
        except RuntimeError as exc:
            # Celery's Redis result backend gives up subscribing with a bare RuntimeError.
            raise BrokerUnavailable(f"cannot send {name}: result backend "
                                    f"{redact_url(self.settings.result_backend)} unreachable: "
                                    f"{exc}") from exc
        except _SEND_ERRORS as exc:
            raise BrokerUnavailable(f"cannot send {name}: broker "
                                    f"{redact_url(self.settings.broker_url)} unreachable: "
                                    f"{exc}") from exc

    def _broadcast(self, command: str, arguments: dict[str, Any], timeout: float,
                   limit: int | None = None) -> list[Any]:
        self._ensure_reachable()
        for attempt in (1, 2):
            try:
                replies = self.app.control.broadcast(command, arguments=arguments, reply=True,
                                                     timeout=timeout, limit=limit)
                return list(replies or [])
            except _SEND_ERRORS as exc:
                if attempt == 1:
                    # A pooled connection that died with a Redis restart fails once (and
                    # is dropped): try again before calling the broker unreachable.
                    continue
                raise BrokerUnavailable(f"cannot broadcast {command}: broker "
                                        f"{redact_url(self.settings.broker_url)} unreachable: "
                                        f"{exc}") from exc
        raise AssertionError("unreachable")

    def _check_workers(self, timeout: float) -> None:
        """Once per client, before a longer wait: warn up front when no worker answers."""
        if not self._workers_seen and timeout > defaults.WORKER_CHECK_S:
            self._workers_seen = transport.workers_answer(self.app, self.settings, timeout)

    def _wait(self, result: Any, timeout: float, what: str) -> Any:
        started = time.monotonic()
        self._check_workers(timeout)
        left = max(timeout - (time.monotonic() - started), 0.05)
        try:
            value = result.get(timeout=left, interval=0.05, propagate=False)
        except CeleryTimeoutError:
            raise ResultTimeout(
                f"{what}: no result within {timeout:g} s (task {result.id}); is a predq worker "
                f"consuming queue {defaults.DEFAULT_QUEUE!r} at "
                f"{redact_url(self.settings.broker_url)}?") from None
        except (RuntimeError, *_SEND_ERRORS) as exc:
            # RuntimeError: Celery's Redis result backend giving up on reconnecting.
            raise BrokerUnavailable(f"{what}: result backend "
                                    f"{redact_url(self.settings.result_backend)} unreachable: "
                                    f"{exc}") from exc
        if isinstance(value, BaseException):
            raise TaskFailed(f"{what}: task {result.id} failed on the worker: "
                             f"{type(value).__name__}: {value}")
        return value


def _batch_results(value: Any, ids: list[str], what: str, offset: int = 0
                   ) -> list[dict[str, Any]]:
    """One result per row in input order, each with the version that computed it; a
    worker's `rows[k]` (k within the chunk) is renumbered to the caller's index."""
    if not isinstance(value, dict):
        raise TaskFailed(f"{what}: unexpected result {value!r:.100}")
    if value.get("error"):
        raise PredictionError(f"{what}: {value['error']}")
    results = value.get("results")
    if not isinstance(results, list) or len(results) != len(ids):
        got = len(results) if isinstance(results, list) else type(results).__name__
        raise TaskFailed(f"{what}: expected {len(ids)} results, got {got}")
    by_id = {r.get("request_id"): r for r in results if isinstance(r, dict)}
    out: list[dict[str, Any]] = []
    for position, rid in enumerate(ids):
        item = by_id.get(rid) or results[position]
        row = {"request_id": rid, **item}
        if offset and isinstance(row.get("error"), str):
            row["error"] = _CHUNK_ROW.sub(lambda m: f"rows[{int(m[1]) + offset}]",
                                          row["error"], count=1)
        if "error" not in row:
            row.setdefault("model_version", value.get("model_version"))
            row.setdefault("model_sha256", value.get("model_sha256"))
        out.append(row)
    return out
