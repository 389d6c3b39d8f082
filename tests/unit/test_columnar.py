"""The columnar predict_batch payload (issue 16): the same predictions, errors and logged
rows as the row payload for the same input; its own shape problems named."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from celery import Celery

from modelstore.artifacts import describe_features
from modelstore.loader import LoadedModel
from modelstore.settings import Settings
from tests.support import models
from workers import columnar
from workers.execute import ServingModel, execute
from workers.tasks import register_tasks
from workers.validation import Limits

COLUMNS = list(models.rows(1)[0])


def bad_batch() -> list[dict[str, Any]]:
    """Good rows with bad ones in the middle: a null, a wrong type, a lone surrogate."""
    rows = models.rows(8)
    rows[2] = dict(rows[2], mileage=None)
    rows[4] = dict(rows[4], year="old")
    rows[5] = dict(rows[5], brand="Sko\ud800da")
    return rows


def as_columnar(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    return COLUMNS, [[r[c] for c in COLUMNS] for r in rows]


def serving() -> ServingModel:
    artifact = models.small_model()
    loaded = LoadedModel(artifact, "default", "v1", "ab" * 32, "database", 1,
                         describe_features(artifact))
    return ServingModel.wrap(loaded, 1)


def run(rows: list[object], shape_errors: dict[int, str] | None = None) -> Any:
    ids = [f"r{i}" for i in range(len(rows))]
    return execute(serving(), rows, ids, Limits(), shape_errors=shape_errors,
                   request_times=["2026-01-02T03:04:05"] * len(rows))


def test_columnar_rows_give_the_same_results_and_logged_rows_as_dicts() -> None:
    rows = bad_batch()
    converted, shape_errors = columnar.to_rows(*as_columnar(rows))
    assert shape_errors == {}
    by_dict, by_columns = run(list(rows)), run(converted, shape_errors)
    assert by_columns.results == by_dict.results
    assert by_columns.rows == by_dict.rows
    errors = {i: r["error"] for i, r in enumerate(by_dict.results) if "error" in r}
    assert sorted(errors) == [2, 4, 5]
    assert errors[2] == "rows[2].features.mileage: must not be null"


def test_a_data_row_of_the_wrong_shape_fails_alone() -> None:
    columns, data = as_columnar(models.rows(4))
    data[1] = data[1][:-1]
    data[2] = {"brand": "x"}
    converted, shape_errors = columnar.to_rows(columns, data)
    outcome = run(converted, shape_errors)
    assert outcome.results[1]["error"] == (
        f"rows[1]: {len(columns) - 1} values, expected {len(columns)} (one per column)")
    assert outcome.results[2]["error"].startswith("rows[2]: expected a list of ")
    assert [r["request_id"] for r in outcome.rows] == ["r0", "r3"]


@pytest.fixture(scope="module")
def task() -> Any:
    app = Celery("predq-columnar-test", set_as_current=False)
    with warnings.catch_warnings():
        # Celery shares decorated tasks between apps; the worker app's copies are the same.
        warnings.simplefilter("ignore")
        register_tasks(app, Settings.from_env({}))
        return app.tasks["predq.predict_batch"]


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"columns": ["a", "a"], "data": [[1, 2]]}, "columns[1]: duplicate of columns[0] ('a')"),
    ({"columns": ["a", 3], "data": [[1, 2]]}, "columns[1]: expected a string, got number"),
    ({"columns": "a", "data": [[1]]}, "columns: expected a list of feature names, got string"),
    ({"columns": [], "data": [[1]]}, "columns: must name at least one feature"),
    ({"columns": ["a"], "data": [[1]], "rows": [{"a": 1}]},
     "rows: give either rows or columns + data, not both"),
    ({"columns": ["a"], "data": {"a": [1]}},
     "data: expected a list of rows (each a list of values), got object"),
    ({"columns": ["a"]}, "data: missing (columns need data: a list of rows, each a list "
                         "of values)"),
    ({"data": [[1]]}, "columns: expected a list of feature names, got null"),
    ({"columns": ["a"], "data": []}, "data: empty batch"),
    ({"columns": ["a"], "data": [[1]], "request_ids": ["x", "y"]},
     "request_ids: expected a list as long as data"),
    ({"rows": [{"a": 1}], "return_results": "no"},
     "return_results: expected true or false, got 'no'"),
])
def test_whole_batch_problems_refuse_the_batch(task: Any, kwargs: dict[str, Any],
                                               error: str) -> None:
    assert task(**kwargs) == {"error": error, "results": []}


def test_too_many_data_rows_is_refused_naming_the_cap(task: Any) -> None:
    result = task(columns=["a"], data=[[1]] * 10_001)
    assert result["error"].startswith("data: 10001 rows exceed the cap of 10000")


def test_summary_counts_predictions_and_lists_errors() -> None:
    result = {"model_version": "v1", "model_sha256": "s", "results": [
        {"request_id": "a", "prediction": 1.0, "confidence": None},
        {"request_id": "b", "error": "rows[1].features.x: missing"}]}
    assert columnar.summary(result) == {
        "model_version": "v1", "model_sha256": "s", "count": 1,
        "errors": [{"index": 1, "request_id": "b", "error": "rows[1].features.x: missing"}]}
