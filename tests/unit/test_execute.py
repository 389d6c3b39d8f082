"""One batch through one model object: version truth, per-item errors, isolation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from modelstore.artifacts import describe_features
from modelstore.errors import InvalidInput
from modelstore.loader import LoadedModel
from modelstore.predictions import PredictionRow
from producer.sample import FEATURES, make_cars, train_pipeline, train_seed_dict
from workers.execute import ServingModel, execute, persist
from workers.validation import Limits


@pytest.fixture(scope="module")
def cars() -> pd.DataFrame:
    return make_cars(400, seed=3)


def serving(artifact: Any, version: str = "v1") -> ServingModel:
    loaded = LoadedModel(artifact, "default", version, "ab" * 32, "database", 7,
                         describe_features(artifact))
    return ServingModel.wrap(loaded, 7)


def rows_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in frame[list(FEATURES)].to_dict(orient="records")]


def test_pipeline_batch_matches_in_process_predict_and_carries_the_version(
        cars: pd.DataFrame) -> None:
    model = train_pipeline(cars, n_estimators=5, max_depth=4)
    feats = rows_of(cars.head(20))
    outcome = execute(serving(model, "v9"), feats, [f"r{i}" for i in range(20)], Limits())
    expected = model.predict(cars.head(20)[list(FEATURES)])
    assert [r["prediction"] for r in outcome.results] == pytest.approx(list(expected))
    assert {row["model_version"] for row in outcome.rows} == {"v9"}
    assert {row["model_sha256"] for row in outcome.rows} == {"ab" * 32}
    assert all(r["confidence"] is None for r in outcome.results)


def test_seed_dict_artifact_predicts_like_its_parts(cars: pd.DataFrame) -> None:
    artifact = train_seed_dict(cars, n_estimators=5, max_depth=4)
    feats = rows_of(cars.head(5))
    outcome = execute(serving(artifact), feats, [f"s{i}" for i in range(5)], Limits())
    x = artifact["scaler"].transform(artifact["preprocessor"].transform(
        cars.head(5)[list(FEATURES)]))
    assert [r["prediction"] for r in outcome.results] == pytest.approx(
        list(artifact["model"].predict(x)))


def test_classifier_confidence_is_the_top_probability(cars: pd.DataFrame) -> None:
    x = cars[["year", "mileage", "engine_size"]]
    y = (cars["price"] > cars["price"].median()).astype(int)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    feats = [{k: float(v) for k, v in r.items()} for r in x.head(4).to_dict(orient="records")]
    outcome = execute(serving(clf), feats, ["c0", "c1", "c2", "c3"], Limits())
    top = clf.predict_proba(x.head(4)).max(axis=1)
    assert [r["confidence"] for r in outcome.results] == pytest.approx(list(top))
    assert all(0.5 <= r["confidence"] <= 1.0 for r in outcome.results)


def test_bad_items_fail_alone_and_are_not_logged(cars: pd.DataFrame) -> None:
    model = train_pipeline(cars, n_estimators=3, max_depth=3)
    good = rows_of(cars.head(3))
    feats: list[object] = [good[0], {"year": 1}, good[1], "not a row", good[2]]
    outcome = execute(serving(model), feats, ["a", "b", "c", "d", "a"], Limits())
    errors = {i: r["error"] for i, r in enumerate(outcome.results) if "error" in r}
    assert set(errors) == {1, 3, 4}
    assert errors[1].startswith("rows[1].features: missing 5 features: mileage")
    assert errors[4] == "request_ids[4]: duplicate of request_ids[0] ('a')"
    assert [row["request_id"] for row in outcome.rows] == ["a", "c"]


def test_single_rows_mode_reports_plain_field_errors(cars: pd.DataFrame) -> None:
    model = train_pipeline(cars, n_estimators=3, max_depth=3)
    good = rows_of(cars.head(1))[0]
    bad = {k: v for k, v in good.items() if k != "mileage"}
    outcome = execute(serving(model), [bad, good, good], ["x", "y", "y"], Limits(),
                      single_rows=True)
    assert outcome.results[0]["error"] == "features.mileage: missing"
    assert "prediction" in outcome.results[1] and "prediction" in outcome.results[2]


def test_persist_isolates_a_row_the_store_refuses(cars: pd.DataFrame) -> None:
    model = train_pipeline(cars, n_estimators=3, max_depth=3)
    feats = rows_of(cars.head(4))
    outcome = execute(serving(model), feats, ["p0", "p1", "p2", "p3"], Limits())
    written: list[str] = []

    def write(rows: Sequence[PredictionRow]) -> None:
        if any(r["request_id"] == "p2" for r in rows):
            raise InvalidInput("rows[0].input_features: refused")
        written.extend(r["request_id"] for r in rows)

    persist(outcome, write)
    assert written == ["p0", "p1", "p3"]
    assert outcome.results[2] == {"request_id": "p2",
                                  "error": "not logged: rows[0].input_features: refused"}
    assert all("prediction" in outcome.results[i] for i in (0, 1, 3))


def test_a_model_that_breaks_on_one_row_fails_only_that_row() -> None:
    class Picky:
        feature_names_in_ = np.array(["a"])

        def predict(self, frame: pd.DataFrame) -> np.ndarray:
            if (frame["a"] == 13).any():
                raise ValueError("unlucky")
            return frame["a"].to_numpy() * 2.0

    outcome = execute(serving(Picky()), [{"a": 1.0}, {"a": 13.0}, {"a": 2.0}],
                      ["u", "v", "w"], Limits())
    assert [r.get("prediction") for r in outcome.results] == [2.0, None, 4.0]
    assert "prediction failed: ValueError: unlucky" in outcome.results[1]["error"]
