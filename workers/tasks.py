"""The wire contract's tasks. JSON in, JSON out; names are the public API."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from modelstore.db import ModelEvaluationDB
from modelstore.defaults import DEFAULT_MODEL_NAME
from modelstore.errors import (
    ArtifactError,
    DatabaseUnavailable,
    DuplicateModelVersion,
    InvalidInput,
    ModelNotFound,
)
from modelstore.settings import Settings
from workers import columnar, uploads
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
    uploads.warn_if_unsafe(settings)

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
                      request_time: object = None, columns: object = None,
                      data: object = None, return_results: object = True,
                      **extra: Any) -> dict[str, Any]:
        shape_errors: dict[int, str] = {}
        problem = _unexpected(extra) or _results_problem(return_results)
        if not problem and (columns is not None or data is not None):
            problem = columnar.columnar_problem(rows, columns, data)
            if not problem:
                problem = columnar.batch_problem(data, request_ids, settings, "data")
            if not problem:  # columnar_problem proved both lists
                rows, shape_errors = columnar.to_rows(columns, data)  # type: ignore[arg-type]
        problem = problem or columnar.batch_problem(rows, request_ids, settings)
        if problem or not isinstance(rows, list):  # the isinstance narrows for mypy
            return {"error": problem, "results": []}
        ids = request_ids if isinstance(request_ids, list) else [
            f"{self.request.id}:{i}" for i in range(len(rows))]
        result = get_state(settings).predict_rows(rows, ids, model, version, request_time,
                                                  shape_errors)
        if return_results is False and "error" not in result:
            return columnar.summary(result)
        return result

    @app.task(name="predq.store_model", bind=True, typing=False)
    def store_model(self: Task, **kwargs: Any) -> dict[str, Any]:
        try:
            return uploads.store_model(app, settings, **kwargs)
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


def _results_problem(value: object) -> str | None:
    if value is True or value is False:
        return None
    return f"return_results: expected true or false, got {value!r:.60}"
