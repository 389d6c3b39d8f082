"""The `predq` CLI end to end: real worker subprocesses on Redis and on RabbitMQ, a fresh
Postgres database, every command run as its own process (`python -m producer.cli`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest

from modelstore import formats
from modelstore.settings import Settings
from producer.client import PredqClient
from producer.sample import FEATURES, TARGET, make_cars, train_pipeline
from producer.worker_procs import WorkerGroup
from tests.support.rabbit import Broker

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(pg_url: str, broker: Broker, tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("PREDQ_") and k != "DATABASE_URL"}
    return {**base, "DATABASE_URL": pg_url, **broker.env(),
            "PREDQ_MODEL_DIR": str(tmp_path / "models"),
            "PREDQ_SPOOL_DIR": str(tmp_path / "spool"), "PREDQ_GENERATION_POLL": "0.5",
            "COLUMNS": "200", "PYTHONPATH": str(ROOT)}


def predq(env: dict[str, str], *args: str, expect: int = 0) -> str:
    done = subprocess.run([sys.executable, "-m", "producer.cli", *args], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == expect, f"predq {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path, Any]:
    """Two small versions whose outputs differ by 100,000, saved as joblib files."""
    cars = make_cars(400, seed=1)
    v1, v2 = tmp_path / "v1.joblib", tmp_path / "v2.joblib"
    first = train_pipeline(cars, n_estimators=5, max_depth=6)
    joblib.dump(first, v1)
    joblib.dump(train_pipeline(cars, n_estimators=5, max_depth=6, offset=100_000), v2)
    return v1, v2, first


@contextmanager
def workers(env: dict[str, str], tmp_path: Path, *names: str) -> Iterator[WorkerGroup]:
    with PredqClient(Settings.from_env(env)) as client, \
            WorkerGroup(env, names, tmp_path / "logs", concurrency=4) as group:
        group.wait_ready(client.app, timeout=120)
        yield group


def register_v1(env: dict[str, str], path: Path) -> str:
    out = predq(env, "register", str(path), "--model-type", "RandomForest", "--run-id",
                "run-v1", "--metric", "rmse=1500", "--direct", "--promote")
    return out.split(" version ")[1].split()[0]


def test_predict_csv_then_backfill_shows_mae_in_stats(
        env: dict[str, str], tmp_path: Path, models: tuple[Path, Path, Any]) -> None:
    v1_path, _v2, v1_model = models
    v1 = register_v1(env, v1_path)
    cars = make_cars(300, seed=5)
    cars.insert(0, "request_id", [f"csv-{i}" for i in range(len(cars))])
    cars.to_csv(tmp_path / "cars.csv", index=False)
    with workers(env, tmp_path, "clie2e"):
        out = predq(env, "predict", "--input", str(tmp_path / "cars.csv"), "--output",
                    str(tmp_path / "results.csv"), "--exclude", TARGET, "--chunk-size", "100")
        assert f"wrote 300 results to {tmp_path / 'results.csv'}: 0 error(s)" in out
        results = pd.read_csv(tmp_path / "results.csv")
        assert list(results["request_id"]) == list(cars["request_id"])
        assert set(results["model_version"]) == {v1}
        expected = v1_model.predict(cars[list(FEATURES)])
        assert results["prediction"].to_numpy() == pytest.approx(expected)

        pd.DataFrame({"request_id": cars["request_id"], "actual_value": cars[TARGET]}).to_csv(
            tmp_path / "actuals.csv", index=False)
        assert "updated 300, unknown 0, invalid 0" in predq(
            env, "backfill", str(tmp_path / "actuals.csv"))
    stats = json.loads(predq(env, "stats", "--json"))
    assert [(s["model_version"], s["predictions"], s["labelled"]) for s in stats] == [
        (v1, 300, 300)]
    mae = float(abs(expected - cars[TARGET].to_numpy()).mean())
    assert stats[0]["mae"] == pytest.approx(mae)
    assert f"{mae:,.2f}" in predq(env, "stats")


def test_register_promote_serving_shows_the_new_version_on_every_process(
        env: dict[str, str], tmp_path: Path, models: tuple[Path, Path, Any]) -> None:
    v1_path, v2_path, _model = models
    v1 = register_v1(env, v1_path)
    with workers(env, tmp_path, "clia", "clib"):
        before = json.loads(predq(env, "serving", "--json", "--model", "default"))
        assert {r["version"] for r in before} == {v1} and len(before) == 2

        # Through the broker as skops: workers without a key refuse unsigned pickle.
        v2_skops = tmp_path / "v2.skops"
        v2_skops.write_bytes(formats.dumps(joblib.load(v2_path), formats.FORMAT_SKOPS))
        out = predq(env, "register", str(v2_skops), "--model-type", "RandomForest",
                    "--run-id", "run-v2", "--via-workers")
        v2 = out.split(" version ")[1].split()[0]
        assert v2 != v1
        promoted = predq(env, "promote", v2, "--timeout", "10")
        assert "2/2 serving process(es) on 2 node(s) confirmed" in promoted

        after = json.loads(predq(env, "serving", "--json", "--model", "default"))
        assert sorted(r["node"].split("@")[0] for r in after) == ["clia", "clib"]
        assert all(r["version"] == v2 and r["generation"] == 2 for r in after), after

        row = json.dumps(make_cars(1, seed=8)[list(FEATURES)].to_dict(orient="records")[0])
        result = json.loads(predq(env, "predict", row))
        assert result["model_version"] == v2 and result["prediction"] > 90_000
    history = json.loads(predq(env, "history", "--json"))
    assert (history[0]["from_version"], history[0]["to_version"]) == (v1, v2)
