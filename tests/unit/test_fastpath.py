"""The fast forest path equals sklearn's predict, and steps aside when it would not."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

from producer.sample import FEATURES, make_cars, train_pipeline
from workers.fastpath import compile_predictor
from workers.inference import predict_frame


@pytest.fixture(scope="module")
def cars() -> pd.DataFrame:
    return make_cars(500, seed=5)


def test_pipeline_fast_path_equals_sklearn_on_every_call(cars: pd.DataFrame) -> None:
    model = train_pipeline(cars, n_estimators=12, max_depth=6)
    calls: list[int] = []

    def slow(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        calls.append(len(frame))
        return predict_frame(model, frame)

    predictor = compile_predictor(model, slow)
    for start in (0, 7, 100, 300):
        frame = cars.iloc[start:start + 13][list(FEATURES)]
        got, conf = predictor(frame)
        assert conf is None
        np.testing.assert_allclose(got, model.predict(frame), rtol=1e-12)
    assert calls == [13], "sklearn's predict runs only for the first (checking) call"


@pytest.mark.parametrize("forest", [RandomForestRegressor, ExtraTreesRegressor])
def test_bare_forest_on_numbers(forest: type, cars: pd.DataFrame) -> None:
    x = cars[["year", "mileage", "engine_size"]].astype(float)
    model = forest(n_estimators=8, max_depth=5, random_state=0).fit(x, cars["price"])
    predictor = compile_predictor(model, lambda f: predict_frame(model, f))
    predictor(x.head(5))
    np.testing.assert_allclose(predictor(x.iloc[5:40])[0], model.predict(x.iloc[5:40]))


def test_disagreement_keeps_sklearns_answer(cars: pd.DataFrame,
                                            caplog: pytest.LogCaptureFixture) -> None:
    model = train_pipeline(cars, n_estimators=4, max_depth=3)

    def shifted(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        return model.predict(frame) + 1.0, None

    predictor = compile_predictor(model, shifted)
    frame = cars.head(6)[list(FEATURES)]
    with caplog.at_level(logging.WARNING, logger="workers.fastpath"):
        first = predictor(frame)[0]
    second = predictor(frame)[0]
    np.testing.assert_allclose(first, model.predict(frame) + 1.0)
    np.testing.assert_allclose(second, model.predict(frame) + 1.0)
    assert "disagrees" in caplog.text
