"""The fast forest path equals sklearn's predict, and steps aside when it would not."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

from producer.sample import FEATURES, make_cars, train_pipeline, train_seed_dict
from workers.fastpath import Rows, compile_predictor
from workers.inference import predict_frame


@pytest.fixture(scope="module")
def cars() -> pd.DataFrame:
    return make_cars(500, seed=5)


def test_pipeline_fast_path_equals_sklearn_on_every_call(cars: pd.DataFrame) -> None:
    model = train_pipeline(cars, n_estimators=12, max_depth=6)
    calls: list[int] = []

    def slow(rows: Rows) -> tuple[np.ndarray, np.ndarray | None]:
        calls.append(len(rows))
        return predict_frame(model, pd.DataFrame(list(rows)))

    predictor = compile_predictor(model, slow)
    for start in (0, 7, 100, 300):
        frame = cars.iloc[start:start + 13][list(FEATURES)]
        got, conf = predictor(records(frame))
        assert conf is None
        np.testing.assert_allclose(got, model.predict(frame), rtol=1e-12)
    assert calls == [13], "sklearn's predict runs only for the first (checking) call"
    assert getattr(predictor, "fast_path", None) is True


def records(frame: pd.DataFrame) -> list[dict[str, object]]:
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in frame.to_dict(orient="records")]


def test_seed_dict_fast_path_equals_its_parts(cars: pd.DataFrame) -> None:
    artifact = train_seed_dict(cars, n_estimators=6, max_depth=5)
    pre, scaler, model = artifact["preprocessor"], artifact["scaler"], artifact["model"]
    predictor = compile_predictor(artifact, lambda rows: predict_frame(
        artifact, pd.DataFrame(list(rows))))
    feats = cars[list(FEATURES)]
    predictor(records(feats.head(3)))
    unseen = records(feats.iloc[10:30])
    unseen[0]["brand"] = "Lada"  # an unseen category: all zeros, as handle_unknown="ignore"
    expected = model.predict(scaler.transform(pre.transform(pd.DataFrame(unseen))))
    np.testing.assert_allclose(predictor(unseen)[0], expected)
    assert getattr(predictor, "fast_path", None) is True


@pytest.mark.parametrize("forest", [RandomForestRegressor, ExtraTreesRegressor])
def test_other_forests_in_a_pipeline(forest: type, cars: pd.DataFrame) -> None:
    from sklearn.pipeline import Pipeline

    from producer.sample import preprocessor

    model = Pipeline([("pre", preprocessor()),
                      ("m", forest(n_estimators=8, max_depth=5, random_state=0))])
    model.fit(cars[list(FEATURES)], cars["price"])
    predictor = compile_predictor(model, lambda rows: predict_frame(
        model, pd.DataFrame(list(rows))))
    feats = cars[list(FEATURES)]
    predictor(records(feats.head(5)))
    np.testing.assert_allclose(predictor(records(feats.iloc[5:40]))[0],
                               model.predict(feats.iloc[5:40]))
    assert getattr(predictor, "fast_path", None) is True


def test_disagreement_keeps_sklearns_answer(cars: pd.DataFrame,
                                            caplog: pytest.LogCaptureFixture) -> None:
    model = train_pipeline(cars, n_estimators=4, max_depth=3)

    def shifted(rows: Rows) -> tuple[np.ndarray, np.ndarray | None]:
        return model.predict(pd.DataFrame(list(rows))) + 1.0, None

    predictor = compile_predictor(model, shifted)
    frame = cars.head(6)[list(FEATURES)]
    with caplog.at_level(logging.WARNING, logger="workers.fastpath"):
        first = predictor(records(frame))[0]
    second = predictor(records(frame))[0]
    np.testing.assert_allclose(first, model.predict(frame) + 1.0)
    np.testing.assert_allclose(second, model.predict(frame) + 1.0)
    assert "disagrees" in caplog.text
    assert getattr(predictor, "fast_path", None) is False


@pytest.mark.parametrize("rows", [1, 2, 255, 256, 257, 400])
def test_flat_forest_matches_sklearn_on_both_sides_of_the_switch(
        rows: int, cars: pd.DataFrame) -> None:
    from workers.fastpath import FlatForest

    model = train_pipeline(cars, n_estimators=7, max_depth=9)
    x = model[:-1].transform(cars[list(FEATURES)].head(rows))
    np.testing.assert_allclose(FlatForest(model[-1]).predict(x), model[-1].predict(x),
                               rtol=1e-12)


def test_a_replaced_model_is_freed_by_reference_counting_alone(cars: pd.DataFrame) -> None:
    """Workers raise gc thresholds (batches allocate many dicts), so a cycle through a
    served model would keep every replaced version alive for a long time (issue 12,
    item 3): the serving wrapper must not form one."""
    import gc
    import weakref

    from modelstore.artifacts import describe_features
    from modelstore.loader import LoadedModel
    from workers.execute import ServingModel, execute
    from workers.validation import Limits

    model = train_pipeline(cars, n_estimators=4, max_depth=3)
    alive = weakref.ref(model)
    serving = ServingModel.wrap(LoadedModel(model, "default", "v1", "ab" * 32, "database", 1,
                                            describe_features(model)), 1)
    del model
    rows = records(cars.iloc[:3][list(FEATURES)])
    enabled = gc.isenabled()
    gc.disable()
    try:
        execute(serving, rows, ["a", "b", "c"], Limits(), single_rows=True)
        assert getattr(serving.predictor, "fast_path", None) is True
        del serving
        assert alive() is None, "a reference cycle keeps the replaced model alive"
    finally:
        if enabled:
            gc.enable()
