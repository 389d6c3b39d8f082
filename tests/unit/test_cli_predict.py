"""`predq predict` and `predq worker` with click's CliRunner and a stub app: parsing,
files in and out, one-line errors and exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from producer import cli as cli_module
from producer.cli import cli
from producer.cli_context import CliState
from producer.client import PredqClient
from producer.sample import FEATURES, make_cars
from producer.testing import StubApp

ROW = ('{"year": 2020, "mileage": 50000, "brand": "Toyota", "condition": "Good", '
       '"engine_size": 2.5, "transmission": "Automatic"}')
ENV = {"DATABASE_URL": "sqlite:///unused.db", "PREDQ_BROKER_URL": "redis://127.0.0.1:6379/15",
       "COLUMNS": "200"}


def predict_one(kwargs: dict[str, Any]) -> dict[str, Any]:
    features = kwargs["features"]
    if "mileage" not in features:
        return {"request_id": kwargs["request_id"], "error": "features.mileage: missing"}
    return {"request_id": kwargs["request_id"], "model_version": "v1", "model_sha256": "ab",
            "prediction": float(features["year"]), "confidence": None}


def predict_batch(kwargs: dict[str, Any]) -> dict[str, Any]:
    rows = kwargs.get("rows") or [dict(zip(kwargs["columns"], values, strict=True))
                                  for values in kwargs["data"]]
    results = [predict_one({"features": f, "request_id": r})
               for f, r in zip(rows, kwargs["request_ids"], strict=True)]
    return {"model_version": "v1", "model_sha256": "ab",
            "results": [{k: v for k, v in r.items() if k not in ("model_version",
                                                                  "model_sha256")}
                        for r in results]}


@pytest.fixture(autouse=True)
def _own_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The feature-schema lookup opens DATABASE_URL (sqlite:///unused.db, relative).
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def stub() -> StubApp:
    return StubApp(tasks={"predq.predict": predict_one, "predq.predict_batch": predict_batch})


def run(stub: StubApp, *args: str, env: dict[str, str] | None = None) -> Result:
    state = CliState(client_factory=lambda s: PredqClient(s, app=stub))
    return CliRunner().invoke(cli, list(args), obj=state, env={**ENV, **(env or {})})


def one_line_error(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_predict_one_row_prints_the_result_as_json(stub: StubApp) -> None:
    result = run(stub, "predict", ROW, "--request-id", "r1", "--model", "cars")
    assert result.exit_code == 0, result.output
    assert '"request_id": "r1"' in result.stdout and '"prediction": 2020.0' in result.stdout
    assert stub.sent[0].kwargs["model"] == "cars"


def test_predict_item_error_is_one_line_and_exit_1(stub: StubApp) -> None:
    result = run(stub, "predict", '{"year": 2020}', "--request-id", "r1")
    assert result.exit_code == 1
    assert one_line_error(result) == (
        "Error: request r1: features.mileage: missing; no model is stored yet "
        "(predq register FILE --model-type TYPE --run-id RUN --promote)")


def test_predict_timeout_is_one_line_and_exit_1() -> None:
    result = run(StubApp(), "predict", ROW, "--timeout", "0.1")
    assert result.exit_code == 1
    assert "no result within 0.1 s" in one_line_error(result)


@pytest.mark.parametrize(("args", "message"), [
    (["predict", "{oops"], "Invalid value for ROW: not valid JSON"),
    (["predict", "[1, 2]"], "expected a JSON object of features, got list"),
    (["predict"], "give either one JSON ROW or --input FILE"),
    (["predict", ROW, "--input", "x.csv"], "give either one JSON ROW or --input FILE"),
    (["predict", ROW, "--chunk-size", "0"], "Invalid value for '--chunk-size'"),
])
def test_predict_usage_errors_exit_2(stub: StubApp, args: list[str], message: str) -> None:
    result = run(stub, *args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
    assert stub.sent == []


def write_cars(path: Path, n: int = 5) -> pd.DataFrame:
    frame = make_cars(n, seed=4)
    frame.insert(0, "request_id", [f"req-{i}" for i in range(n)])
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return frame


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_predict_file_writes_one_result_per_row_in_order(
        stub: StubApp, tmp_path: Path, suffix: str) -> None:
    source = tmp_path / f"cars{suffix}"
    frame = write_cars(source)
    target = tmp_path / f"out{suffix}"
    result = run(stub, "predict", "--input", str(source), "--output", str(target),
                 "--exclude", "price", "--chunk-size", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    out = pd.read_csv(target) if suffix == ".csv" else pd.read_parquet(target)
    assert list(out["request_id"]) == list(frame["request_id"])
    assert list(out["prediction"]) == [float(y) for y in frame["year"]]
    assert set(out["model_version"]) == {"v1"} and out["error"].isna().all()
    assert f"wrote 5 results to {target}: 0 error(s); versions: v1 (5)" in result.stdout
    sent_features = stub.sent[0].kwargs["columns"]  # columnar by default (issue 16)
    assert sorted(sent_features) == sorted(FEATURES)  # no request_id, no price


def test_predict_file_keeps_bad_rows_as_errors(stub: StubApp, tmp_path: Path) -> None:
    source = tmp_path / "cars.csv"
    pd.DataFrame({"year": [2020, 2021], "brand": ["Kia", "Kia"]}).to_csv(source, index=False)
    result = run(stub, "predict", "--input", str(source), "--no-progress", "--allow-errors")
    assert result.exit_code == 0, result.output
    out = pd.read_csv(tmp_path / "cars.predictions.csv")
    assert list(out["error"]) == ["features.mileage: missing"] * 2
    assert "2 error(s)" in result.stdout
    failed = run(stub, "predict", "--input", str(source), "--no-progress")
    assert failed.exit_code == 1
    assert "2 of 2 row(s) failed" in one_line_error(failed)


@pytest.mark.parametrize(("name", "extra", "message"), [
    ("cars.txt", [], "--input "),
    ("missing.csv", [], "No such file or directory"),
    ("cars.csv", ["--exclude", "nope"], "column(s) nope not in"),
])
def test_predict_file_problems_are_one_line(stub: StubApp, tmp_path: Path, name: str,
                                            extra: list[str], message: str) -> None:
    if name != "missing.csv":
        write_cars(tmp_path / "cars.csv")
        (tmp_path / "cars.txt").write_text("year\n2020\n")
    result = run(stub, "predict", "--input", str(tmp_path / name), *extra)
    assert result.exit_code in (1, 2)
    assert message in result.stderr and "Traceback" not in result.output


def test_worker_execs_celery_with_predq_defaults_and_passthrough(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(cli_module, "exec_process", calls.append)
    result = run(StubApp(), "worker", "-n", "w1@%h", "--loglevel", "DEBUG",
                 env={"PREDQ_WORKER_THREADS": "12"})
    assert result.exit_code == 0, result.output
    argv = calls[0]
    assert argv[1:6] == ["-m", "celery", "-A", "workers", "worker"]
    joined = " ".join(argv)
    assert "--pool threads --concurrency 12 -Q predq --loglevel INFO" in joined
    assert argv[-4:] == ["-n", "w1@%h", "--loglevel", "DEBUG"]


def test_a_malformed_setting_is_one_line_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_module, "exec_process", lambda argv: None)
    result = run(StubApp(), "worker", env={"PREDQ_WORKER_THREADS": "many"})
    assert result.exit_code == 1
    assert one_line_error(result) == ("Error: PREDQ_WORKER_THREADS: expected an integer, "
                                      "got 'many'")
