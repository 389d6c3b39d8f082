"""Ops and store commands with CliRunner on a SQLite store and a stub app: promote and
rollback confirmation and exit codes, serving, models, history, stats, backfill, db,
register, and the demo's refusal to wipe a directory it did not create."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import joblib
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, inspect

from modelstore.db import ModelEvaluationDB
from producer.cli import cli
from producer.cli_context import CliState
from producer.client import PredqClient
from producer.sample import make_cars, train_pipeline
from producer.testing import StubApp


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    buffer = io.BytesIO()
    joblib.dump(train_pipeline(make_cars(200, seed=1), n_estimators=2, max_depth=3), buffer)
    return buffer.getvalue()


@pytest.fixture
def store(sqlite_url: str, model_bytes: bytes) -> str:
    """v1 in production, v2 stored; two logged predictions of v1, one labelled."""
    db = ModelEvaluationDB(sqlite_url)
    db.store_model("run-1", "v1", "RandomForest", model_bytes, rmse=10.0, is_production=True)
    db.store_model("run-2", "v2", "RandomForest", model_bytes, rmse=9.0)
    db.store_predictions([
        {"request_id": "a", "model_version": "v1", "input_features": {"x": 1},
         "predicted_value": 100.0},
        {"request_id": "b", "model_version": "v1", "input_features": {"x": 2},
         "predicted_value": 200.0}])
    db.backfill_actuals({"a": 90.0})
    return sqlite_url


def run(app: StubApp, url: str, *args: str) -> Result:
    state = CliState(client_factory=lambda s: PredqClient(s, app=app))
    env = {"DATABASE_URL": url, "PREDQ_BROKER_URL": "redis://127.0.0.1:6379/15",
           "COLUMNS": "200"}
    return CliRunner().invoke(cli, list(args), obj=state, env=env)


def node(name: str, pid: int, version: str, generation: int) -> dict[str, Any]:
    return {name: {"hostname": "h", "processes": [
        {"pid": pid, "models": {"default": {"model_version": version,
                                            "generation": generation}}}]}}


def switching_app(*final: dict[str, Any]) -> StubApp:
    return StubApp(broadcasts={"predq_promote": lambda a: list(final),
                               "predq_serving": lambda a: list(final)})


def test_promote_confirmed_prints_the_table_and_exits_0(store: str) -> None:
    result = run(switching_app(node("w1@h", 11, "v2", 2), node("w2@h", 21, "v2", 2)),
                 store, "promote", "v2", "--reason", "better rmse")
    assert result.exit_code == 0, result.output
    assert "promote: model 'default' v1 -> v2 (generation 2); 2/2" in result.stdout
    assert "w2@h" in result.stdout and "21" in result.stdout
    history = ModelEvaluationDB(store).promotion_history("default")
    assert history[0]["to_version"] == "v2" and history[0]["reason"] == "better rmse"


def test_promote_unconfirmed_exits_3_naming_the_process(store: str) -> None:
    result = run(switching_app(node("w1@h", 11, "v2", 2), node("w2@h", 21, "v1", 1)),
                 store, "promote", "v2", "--timeout", "0.3")
    assert result.exit_code == 3
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("Error: model 'default' promoted to 'v2'")
    assert "did not confirm: w2@h pid 21 (serves 'v1', generation 1)" in line


def test_promote_of_an_unknown_version_is_one_line_exit_1(store: str) -> None:
    result = run(StubApp(), store, "promote", "nope")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: model 'default' has no version 'nope'; "
                                     "nothing changed")


def test_rollback_goes_back_and_confirms(store: str) -> None:
    ModelEvaluationDB(store).set_production_model("v2")
    result = run(switching_app(node("w1@h", 11, "v1", 3)), store, "rollback")
    assert result.exit_code == 0, result.output
    assert "rollback: model 'default' v2 -> v1 (generation 3)" in result.stdout


def test_serving_json_and_no_worker_exit_code(store: str) -> None:
    app = StubApp(broadcasts={"predq_serving": lambda a: [node("w1@h", 11, "v1", 1)]})
    result = run(app, store, "serving", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["node"], r["pid"], r["version"]) for r in rows] == [("w1@h", 11, "v1")]
    nobody = run(StubApp(), store, "serving")
    assert nobody.exit_code == 3 and nobody.stderr.strip() == (
        "Error: no worker replied at redis://127.0.0.1:6379/15; start one with `predq worker`")


def test_unknown_models_and_empty_listings_name_the_known_models(store: str) -> None:
    promote = run(StubApp(), store, "promote", "v1", "--model", "nosuch")
    assert promote.exit_code == 1
    assert promote.stderr.strip() == ("Error: model 'nosuch' has no version 'v1'; nothing "
                                      "changed; known models: default")
    for command in ("models", "history", "stats"):
        empty = run(StubApp(), store, command, "--model", "nosuch")
        assert empty.exit_code == 0, empty.output
        assert empty.stderr.strip().startswith("no ") and empty.stderr.strip().endswith(
            "for model 'nosuch'; known models: default"), empty.stderr


def test_reload_shows_the_replies(store: str) -> None:
    app = StubApp(broadcasts={"predq_reload": lambda a: [node("w1@h", 11, "v1", 1)]})
    result = run(app, store, "reload", "--model", "default")
    assert result.exit_code == 0 and "w1@h" in result.stdout
    assert app.broadcasts_sent[0].arguments == {"model": "default"}


def test_models_history_and_stats(store: str) -> None:
    models = json.loads(run(StubApp(), store, "models", "--json").stdout)
    assert [m["model_version"] for m in models] == ["v2", "v1"]
    assert "v1" in run(StubApp(), store, "models").stdout
    history = json.loads(run(StubApp(), store, "history", "--json").stdout)
    assert history[0]["to_version"] == "v1"
    stats = json.loads(run(StubApp(), store, "stats", "--json").stdout)
    assert stats[0]["model_version"] == "v1" and stats[0]["predictions"] == 2
    assert stats[0]["labelled"] == 1 and stats[0]["mae"] == pytest.approx(10.0)
    table = run(StubApp(), store, "stats").stdout
    assert "50.0%" in table and "10.00" in table


def test_backfill_counts_and_missing_file(store: str, tmp_path: Path) -> None:
    path = tmp_path / "actuals.csv"
    path.write_text("request_id,actual_value\na,1\nzz,2\nb,oops\n")
    app = StubApp(tasks={"predq.backfill_actuals": lambda kw: {
        "updated": 1, "unknown": ["zz"], "invalid": {}}})
    result = run(app, store, "backfill", str(path))
    assert result.exit_code == 0, result.output
    assert "updated 1, unknown 1, invalid 1" in result.stdout
    assert "actual_value 'oops' is not a number" in result.stderr
    missing = run(app, store, "backfill", str(tmp_path / "none.csv"))
    assert missing.exit_code == 1 and "No such file or directory" in missing.stderr


def test_db_init_creates_the_schema(sqlite_url: str) -> None:
    result = run(StubApp(), sqlite_url, "db", "init")
    assert result.exit_code == 0, result.output
    tables = set(inspect(create_engine(sqlite_url)).get_table_names())
    assert {"model_artifacts", "model_predictions", "model_runs", "model_metrics"} <= tables
    upgrade = run(StubApp(), sqlite_url, "db", "upgrade")
    assert upgrade.exit_code == 0, upgrade.output
    assert "schema is current" in upgrade.stdout


def test_db_init_on_an_unreachable_database_is_one_masked_line() -> None:
    result = run(StubApp(), "postgresql://predq:s3cret@127.0.0.1:1/predq", "db", "init")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and "database unavailable" in line
    assert "s3cret" not in line and "Traceback" not in result.output


def test_register_file_direct_promote_then_if_missing(sqlite_url: str, model_bytes: bytes,
                                                      tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    path.write_bytes(model_bytes)
    result = run(StubApp(), sqlite_url, "register", str(path), "--model-type", "RF",
                 "--run-id", "r1", "--metric", "rmse=3.5", "--direct", "--promote",
                 "--model-version", "v9")
    assert result.exit_code == 0, result.output
    assert "registered model 'default' version v9 and promoted it" in result.stdout
    pointer = ModelEvaluationDB(sqlite_url).production_pointer()
    assert pointer is not None and pointer.model_version == "v9"
    again = run(StubApp(), sqlite_url, "register", "--demo", "--if-missing")
    assert again.exit_code == 0 and "already serves v9" in again.stdout
    assert len(ModelEvaluationDB(sqlite_url).list_models()) == 1


def test_register_via_workers_then_promote_with_confirmation(
        sqlite_url: str, model_bytes: bytes, tmp_path: Path) -> None:
    db = ModelEvaluationDB(sqlite_url)
    db.store_model("r0", "v0", "RF", model_bytes, is_production=True)

    def store(kwargs: dict[str, Any]) -> dict[str, Any]:
        assert kwargs["promote"] is False  # the CLI promotes itself, with confirmation
        stored = db.store_model(kwargs["run_id"], None, kwargs["model_type"], model_bytes)
        return {"model_version": stored.model_version, "sha256": stored.sha256,
                "size_bytes": stored.size_bytes, "generation": None}

    def serving(_args: dict[str, Any]) -> list[dict[str, Any]]:
        pointer = db.production_pointer()
        assert pointer is not None
        return [node("w1@h", 11, pointer.model_version, pointer.generation)]

    app = StubApp(tasks={"predq.store_model": store},
                  broadcasts={"predq_promote": serving, "predq_serving": serving})
    path = tmp_path / "model.joblib"
    path.write_bytes(model_bytes)
    result = run(app, sqlite_url, "register", str(path), "--model-type", "RF", "--run-id",
                 "r1", "--promote", "--via-workers")
    assert result.exit_code == 0, result.output
    assert "1/1 serving process(es) on 1 node(s) confirmed" in result.stdout
    assert db.production_pointer().model_version != "v0"  # type: ignore[union-attr]


@pytest.mark.parametrize(("args", "message"), [
    (["register"], "give an ARTIFACT file or --demo"),
    (["register", "--demo", "--metric", "rmse"], "expected name=number"),
    (["register", "--demo", "--metric", "rmse=inf"], "expected name=number"),
])
def test_register_usage_errors(sqlite_url: str, args: list[str], message: str) -> None:
    result = run(StubApp(), sqlite_url, *args)
    assert result.exit_code == 2 and message in result.stderr


def test_register_artifact_needs_type_and_run_id(sqlite_url: str, tmp_path: Path) -> None:
    path = tmp_path / "m.joblib"
    path.write_bytes(b"x")
    result = run(StubApp(), sqlite_url, "register", str(path))
    assert result.exit_code == 2
    assert "--model-type and --run-id are required" in result.stderr


def test_demo_refuses_to_wipe_a_directory_it_did_not_create(tmp_path: Path) -> None:
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    result = run(StubApp(), "sqlite:///unused.db", "demo", "--dir", str(precious))
    assert result.exit_code == 1
    assert "not a predq demo directory" in result.stderr
    assert (precious / "thesis.tex").read_text() == "do not delete"
