"""`predq predict --input` checks the file before sending (each command its own process,
a real worker on Redis, the model's recorded features in Postgres): one bad cell fails
only its row, errors name file rows (also past the first 1,000-row chunk), failed rows
make the command exit 1, and header problems fail up front in one message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from producer.sample import FEATURES, TARGET, make_cars
from tests.support import models
from tests.support.workerproc import client_app, running_workers, worker_env

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]


def predq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "producer.cli", *args], env=env,
                          capture_output=True, text=True, timeout=180)


def test_bad_cells_fail_only_their_rows_named_by_file_row(pg_url: str, redis_url: str,
                                                          tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    cars = make_cars(1200, seed=3)
    cars.insert(0, "request_id", [f"r{i}" for i in range(len(cars))])
    cars["mileage"] = cars["mileage"].astype(object)
    cars.loc[5, "mileage"] = "high"          # one bad cell: only row 6 fails
    cars.loc[1050, "mileage"] = 1e20          # refused by the worker, in the second chunk
    source, target = tmp_path / "cars.csv", tmp_path / "out.csv"
    cars.drop(columns=[TARGET]).to_csv(source, index=False)
    env = worker_env(pg_url, redis_url, tmp_path)
    with running_workers(env, tmp_path, names=("pf",), app=client_app(env), concurrency=4):
        done = predq(env, "predict", "--input", str(source), "--output", str(target),
                     "--no-progress")
        allowed = predq(env, "predict", "--input", str(source), "--output", str(target),
                        "--no-progress", "--allow-errors")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 of 1,200 row(s) failed" in done.stderr and "--allow-errors" in done.stderr
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "wrote 1,200 results" in allowed.stdout and "2 error(s)" in allowed.stdout
    out = pd.read_csv(target)
    assert list(out["request_id"]) == list(cars["request_id"])
    errors = out["error"].dropna().to_dict()
    assert errors[5] == "row 6 (line 7): mileage: expected a number, got 'high'"
    assert errors[1050].startswith("row 1051 (line 1052): features.mileage: out of range")
    assert set(errors) == {5, 1050}
    assert set(out["model_version"].dropna()) == {"v1"}


def test_header_problems_fail_up_front_in_one_message(pg_url: str, redis_url: str,
                                                      tmp_path: Path) -> None:
    models.register(pg_url, "v1")
    source = tmp_path / "cars.csv"
    make_cars(20, seed=3).drop(columns=["year", "brand"]).to_csv(source, index=False)
    env = worker_env(pg_url, redis_url, tmp_path)  # no worker: nothing may be sent
    done = predq(env, "predict", "--input", str(source), "--id-column", "nosuch")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"Error: --input {source}: no column 'nosuch' for --id-column; missing column(s) "
        "year, brand; unexpected column(s) price (leave them out with --exclude price); "
        f"model 'default' version 'v1' expects {', '.join(FEATURES)}; nothing was sent"]
