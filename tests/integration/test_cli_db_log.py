"""`predq db maintain | prune | refresh-rollups` on Postgres and on SQLite (the demo)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner, Result

from modelstore import ModelEvaluationDB, partitions
from producer.cli import cli
from producer.cli_context import CliState


def run(url: str, *args: str, **env: str) -> Result:
    return CliRunner().invoke(cli, list(args), obj=CliState(),
                              env={"DATABASE_URL": url, "PREDQ_LOG_PARTITIONS_AHEAD": "2",
                                   **env})


def test_maintain_prune_and_refresh_on_postgres(pg_url: str) -> None:
    result = run(pg_url, "db", "maintain")
    assert result.exit_code == 0, result.output
    assert "3 partition(s) created, 0 dropped" in result.output
    assert "0 partition(s) created" in run(pg_url, "db", "maintain").output
    db = ModelEvaluationDB(pg_url)
    with db.engine.begin() as conn:
        old = partitions.create_range(conn, datetime.utcnow() - timedelta(days=40),
                                      datetime.utcnow() - timedelta(days=39), "day")
    db.store_predictions([{"request_id": "old", "model_version": "v1", "input_features": {},
                           "predicted_value": 1.0,
                           "prediction_time": datetime.utcnow() - timedelta(days=40)}])

    refused = run(pg_url, "db", "prune", "--older-than", "0d")
    assert refused.exit_code == 2 and "--force" in refused.output
    assert run(pg_url, "db", "prune", "--older-than", "soon").exit_code == 2
    pruned = run(pg_url, "db", "prune", "--older-than", "30d")
    assert pruned.exit_code == 0, pruned.output
    assert pruned.output.splitlines() == [f"dropped partition {n}" for n in old] + [
        "2 partition(s) dropped"]
    refreshed = run(pg_url, "db", "refresh-rollups")
    assert refreshed.exit_code == 0 and "rollups rebuilt: 0" in refreshed.output
    assert db.prediction_stats()[0]["predictions"] == 1  # the dropped row still counts
    # With retention set, maintain prunes as well.
    assert "0 dropped" in run(pg_url, "db", "maintain", PREDQ_LOG_RETENTION_DAYS="30").output


@pytest.mark.parametrize("command", [["maintain"], ["refresh-rollups"],
                                     ["prune", "--older-than", "30d"]])
def test_the_log_commands_are_harmless_on_sqlite(sqlite_url: str, command: list[str]) -> None:
    ModelEvaluationDB(sqlite_url).store_prediction("v1", {"x": 1}, 2.0, request_id="a")
    result = run(sqlite_url, "db", *command)
    assert result.exit_code == 0, result.output
    assert ModelEvaluationDB(sqlite_url).prediction_stats()[0]["predictions"] == 1
