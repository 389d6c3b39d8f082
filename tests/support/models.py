"""Small models for end-to-end tests: v1 and v2 give outputs that can be told apart."""

from __future__ import annotations

from functools import lru_cache

import pandas as pd
from sklearn.pipeline import Pipeline

from modelstore import ModelEvaluationDB
from modelstore.artifacts import serialize
from producer.sample import FEATURES, make_cars, train_pipeline

V2_OFFSET = 1_000_000.0


@lru_cache(maxsize=1)
def cars() -> pd.DataFrame:
    return make_cars(2_000, seed=1)


@lru_cache(maxsize=2)
def small_model(offset: float = 0.0) -> Pipeline:
    return train_pipeline(cars(), n_estimators=10, max_depth=6, offset=offset)


def rows(n: int, seed: int = 7) -> list[dict[str, object]]:
    frame = make_cars(n, seed=seed)[list(FEATURES)]
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in frame.to_dict(orient="records")]


def register(url: str, version: str, offset: float = 0.0, promote: bool = True) -> None:
    with ModelEvaluationDB(url) as db:
        db.store_model(f"run-{version}", version, "RandomForest", serialize(small_model(offset)),
                       rmse=1.0, is_production=promote)


def is_v2(prediction: float) -> bool:
    return prediction > V2_OFFSET / 2
