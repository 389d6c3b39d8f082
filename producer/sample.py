"""A used-car price data set with the seed's features, and the trainers the demo, the
benchmarks and the tests share. Generated, so nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

NUMERIC = ("year", "mileage", "engine_size")
CATEGORICAL = ("brand", "condition", "transmission")
FEATURES = ("year", "mileage", "brand", "condition", "engine_size", "transmission")
TARGET = "price"

BRANDS = ("Toyota", "Honda", "Ford", "BMW", "Mercedes", "Audi", "Kia", "Hyundai", "Škoda")
CONDITIONS = ("Excellent", "Good", "Fair", "Poor")
TRANSMISSIONS = ("Automatic", "Manual")
_BRAND_PREMIUM = dict(zip(BRANDS, (1.0, 0.95, 0.85, 1.45, 1.5, 1.4, 0.8, 0.8, 0.9), strict=True))
_CONDITION_FACTOR = dict(zip(CONDITIONS, (1.1, 1.0, 0.85, 0.65), strict=True))


def make_cars(n: int, seed: int = 0) -> pd.DataFrame:
    """`n` cars with the seed's six features and a noisy `price`."""
    rng = np.random.default_rng(seed)
    year = rng.integers(2000, 2025, n)
    mileage = np.clip(rng.normal((2025 - year) * 12_000, 15_000), 0, None).round()
    brand = rng.choice(BRANDS, n)
    condition = rng.choice(CONDITIONS, n, p=(0.2, 0.45, 0.25, 0.1))
    engine_size = rng.choice((1.0, 1.4, 1.6, 2.0, 2.5, 3.0, 4.0), n)
    transmission = rng.choice(TRANSMISSIONS, n, p=(0.7, 0.3))
    base = 8_000 + (year - 2000) * 1_100 - mileage * 0.04 + engine_size * 2_500
    factor = np.array([_BRAND_PREMIUM[b] for b in brand]) * np.array(
        [_CONDITION_FACTOR[c] for c in condition])
    price = base * factor + np.where(transmission == "Automatic", 900, 0)
    price = np.clip(price + rng.normal(0, 1_200, n), 500, None).round(2)
    return pd.DataFrame({"year": year, "mileage": mileage, "brand": brand,
                         "condition": condition, "engine_size": engine_size,
                         "transmission": transmission, TARGET: price})


def preprocessor() -> ColumnTransformer:
    return ColumnTransformer([
        ("num", StandardScaler(), list(NUMERIC)),
        ("cat", OneHotEncoder(handle_unknown="ignore"), list(CATEGORICAL)),
    ])


def train_pipeline(df: pd.DataFrame, n_estimators: int = 100, max_depth: int = 12,
                   seed: int = 0, offset: float = 0.0) -> Pipeline:
    """A RandomForest Pipeline taking a DataFrame of FEATURES.

    `offset` shifts every prediction by a constant, so two versions' outputs can be told
    apart in tests (v2 = same data, offset 100_000).
    """
    pipe = Pipeline([
        ("pre", preprocessor()),
        ("rf", RandomForestRegressor(n_estimators=n_estimators, max_depth=max_depth,
                                     random_state=seed, n_jobs=1)),
    ])
    return pipe.fit(df[list(FEATURES)], df[TARGET] + offset)


def train_seed_dict(df: pd.DataFrame, n_estimators: int = 20, max_depth: int = 8,
                    seed: int = 0) -> dict[str, object]:
    """The seed guide's artifact shape: {'model', 'preprocessor', 'scaler'}.

    The preprocessor one-hot encodes and passes numbers through; the scaler scales the
    whole transformed matrix; the model takes the scaled matrix.
    """
    pre = ColumnTransformer([
        ("num", "passthrough", list(NUMERIC)),
        ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), list(CATEGORICAL)),
    ])
    x = pre.fit_transform(df[list(FEATURES)])
    scaler = StandardScaler().fit(x)
    model = RandomForestRegressor(n_estimators=n_estimators, max_depth=max_depth,
                                  random_state=seed, n_jobs=1)
    model.fit(scaler.transform(x), df[TARGET])
    return {"model": model, "preprocessor": pre, "scaler": scaler}
