"""The leader/follower micro-batcher: one model call and one write per batch, every task
answered with its own row once durable, failures confined to their batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
import pytest

from modelstore.artifacts import describe_features
from modelstore.loader import LoadedModel
from producer.sample import FEATURES, make_cars, train_pipeline
from workers.batcher import Batcher
from workers.execute import ServingModel
from workers.validation import Limits


class SlowWriter:
    """Records every write; each takes `delay` seconds, so requests pile up meanwhile."""

    def __init__(self, delay: float = 0.0, fail_first: int = 0) -> None:
        self.delay = delay
        self.fail_first = fail_first
        self.batches: list[list[dict[str, Any]]] = []
        self._lock = threading.Lock()

    def write(self, rows: Sequence[dict[str, Any]]) -> str:
        time.sleep(self.delay)
        with self._lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                raise ConnectionError("database and spool both unavailable")
            self.batches.append(list(rows))
        return "written"

    @property
    def ids(self) -> list[str]:
        return [r["request_id"] for b in self.batches for r in b]


@pytest.fixture(scope="module")
def cars() -> pd.DataFrame:
    return make_cars(300, seed=5)


@pytest.fixture(scope="module")
def model(cars: pd.DataFrame) -> ServingModel:
    artifact = train_pipeline(cars, n_estimators=5, max_depth=4)
    loaded = LoadedModel(artifact, "default", "v1", "cd" * 32, "database", 3,
                         describe_features(artifact))
    return ServingModel.wrap(loaded, 3)


def feature_rows(cars: pd.DataFrame, n: int) -> list[dict[str, Any]]:
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in cars[list(FEATURES)].head(n).to_dict(orient="records")]


def batcher(model: ServingModel, writer: SlowWriter, max_batch: int = 512,
            linger_s: float = 0.0, before: Any = None) -> Batcher:
    return Batcher("default", lambda: model, writer, Limits(), max_batch,  # type: ignore[arg-type]
                   linger_s, before_batch=before)


def test_concurrent_rows_share_batches_and_each_task_gets_its_own_row(
        cars: pd.DataFrame, model: ServingModel) -> None:
    writer = SlowWriter(delay=0.02)
    b = batcher(model, writer, max_batch=8)
    rows = feature_rows(cars, 120)
    with ThreadPoolExecutor(max_workers=40) as pool:
        results = list(pool.map(lambda i: b.predict(rows[i], f"r{i}", 30), range(len(rows))))
    expected = model.loaded.artifact.predict(pd.DataFrame(rows)[list(FEATURES)])
    assert [r["request_id"] for r in results] == [f"r{i}" for i in range(len(rows))]
    assert [r["prediction"] for r in results] == pytest.approx(list(expected))
    assert all(r["model_version"] == "v1" and r["model_sha256"] == "cd" * 32 for r in results)
    assert sorted(writer.ids) == sorted(f"r{i}" for i in range(len(rows)))  # once each
    assert len(writer.batches) < len(rows) / 2, "overlapping requests formed batches"
    assert max(len(batch) for batch in writer.batches) <= 8  # predicted and written


def test_sequential_callers_never_wait_for_company(cars: pd.DataFrame,
                                                    model: ServingModel) -> None:
    writer = SlowWriter()
    b = batcher(model, writer, linger_s=60.0)  # a linger here would stall the test
    rows = feature_rows(cars, 20)
    done = threading.Event()

    def run() -> None:
        for i, row in enumerate(rows):
            b.predict(row, f"s{i}", 30)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(30), "a lone request was held back waiting for company"
    assert [len(batch) for batch in writer.batches] == [1] * len(rows)


def test_a_failed_write_fails_only_its_batch_and_serving_goes_on(
        cars: pd.DataFrame, model: ServingModel) -> None:
    writer = SlowWriter(fail_first=1)
    b = batcher(model, writer)
    rows = feature_rows(cars, 3)
    with pytest.raises(ConnectionError):
        b.predict(rows[0], "f0", 30)
    assert b.predict(rows[1], "f1", 30)["request_id"] == "f1"
    assert writer.ids == ["f1"]


def test_a_failing_model_lookup_hands_over_leadership(cars: pd.DataFrame,
                                                       model: ServingModel) -> None:
    calls = {"n": 0}

    def flaky_before() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("refresher exploded")

    writer = SlowWriter()
    b = batcher(model, writer, before=flaky_before)
    rows = feature_rows(cars, 2)
    with pytest.raises(RuntimeError):
        b.predict(rows[0], "m0", 30)
    assert b.predict(rows[1], "m1", 30)["request_id"] == "m1"


def test_bad_rows_get_their_own_error_and_the_good_ones_are_logged(
        cars: pd.DataFrame, model: ServingModel) -> None:
    writer = SlowWriter(delay=0.02)
    b = batcher(model, writer)
    good = feature_rows(cars, 10)
    bad = dict(good[0], year="soon")
    inputs = [bad if i % 3 == 0 else good[i] for i in range(10)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda i: b.predict(inputs[i], f"x{i}", 30), range(10)))
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert "year" in result["error"]
        else:
            assert "error" not in result
    assert sorted(writer.ids) == sorted(f"x{i}" for i in range(10) if i % 3)


def test_linger_setting_is_parsed_and_bad_values_name_the_variable() -> None:
    from modelstore.errors import ConfigError
    from modelstore.settings import Settings

    assert Settings.from_env({}).batch_linger_ms == 5.0
    assert Settings.from_env({"PREDQ_BATCH_LINGER_MS": "0"}).batch_linger_ms == 0.0
    for bad in ("-1", "soon", "5000"):
        with pytest.raises(ConfigError, match="PREDQ_BATCH_LINGER_MS"):
            Settings.from_env({"PREDQ_BATCH_LINGER_MS": bad})
