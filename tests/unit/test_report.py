"""`predq report` on SQLite: time buckets, error and coverage per version, the promotion
events shown, one SVG mark per datum, a self-contained page, a readable PNG, the CLI."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import update

from modelstore import schema
from modelstore.db import ModelEvaluationDB
from producer.cli import cli
from producer.report import bucket_stats, db_now, load_report, pick_bucket, write_report

H = schema.promotion_history


def seed(url: str) -> datetime:
    """v1 for hours 0-1, v2 for hours 2-3 (10 rows an hour), a promotion at hour 2.

    Errors are exact: v1 rows are off by 10 (half labelled), v2 rows by 30 (all labelled).
    Returns hour 0 (a whole hour, 4 hours before the database's now).
    """
    db = ModelEvaluationDB(url)
    for v in ("v1", "v2"):
        db.store_model(f"run-{v}", v, "Dummy", f"bytes-{v}".encode(), describe=False,
                       is_production=v == "v1")
    with db.engine.connect() as conn:
        hour0 = db_now(conn).replace(minute=0, second=0, microsecond=0) - timedelta(hours=4)
    rows = []
    for h in range(4):
        version, error = ("v1", 10.0) if h < 2 else ("v2", 30.0)
        for k in range(10):
            labelled = version == "v2" or k % 2 == 0
            rows.append({"request_id": f"{h}-{k}", "model_version": version,
                         "input_features": {"x": k}, "predicted_value": 100.0 + error,
                         "actual_value": 100.0 if labelled else None,
                         "prediction_time": hour0 + timedelta(hours=h, minutes=3 * k)})
    db.store_predictions(rows)
    db.set_production_model("v2", reason="better offline")
    with db.engine.begin() as conn:  # place the history in the data's timeline
        conn.execute(update(H).where(H.c.to_version == "v1").values(
            promoted_at=hour0 - timedelta(days=30)))
        conn.execute(update(H).where(H.c.to_version == "v2").values(
            promoted_at=hour0 + timedelta(hours=2)))
    return hour0


def test_pick_bucket_keeps_at_most_sixty_buckets() -> None:
    assert pick_bucket(timedelta(0)) == 60
    assert pick_bucket(timedelta(minutes=59)) == 60
    assert pick_bucket(timedelta(hours=4)) == 300
    assert pick_bucket(timedelta(days=2)) == 3600
    assert pick_bucket(timedelta(days=7)) == 3 * 3600
    assert pick_bucket(timedelta(days=3650)) == 7 * 86_400


def test_hourly_buckets_have_counts_error_and_coverage(sqlite_url: str) -> None:
    hour0 = seed(sqlite_url)
    db = ModelEvaluationDB(sqlite_url)
    with db.engine.connect() as conn:
        stats = bucket_stats(conn, hour0 - timedelta(hours=1), 3600, None)
    got = [(b.start, b.version, b.predictions, b.labelled, b.mae, b.rmse) for b in stats]
    assert got == [(hour0 + timedelta(hours=h), "v1" if h < 2 else "v2", 10,
                    5 if h < 2 else 10, pytest.approx(10.0 if h < 2 else 30.0),
                    pytest.approx(10.0 if h < 2 else 30.0)) for h in range(4)]
    assert [b.coverage for b in stats] == [0.5, 0.5, 1.0, 1.0]


def test_load_report_window_and_events(sqlite_url: str) -> None:
    hour0 = seed(sqlite_url)
    data = load_report(ModelEvaluationDB(sqlite_url), days=1)
    assert data.bucket_s == 300  # ~3.5 h of data: 5-minute buckets
    assert sum(b.predictions for b in data.buckets) == 40
    assert sum(b.labelled for b in data.buckets) == 30
    # The v2 promotion is in the window; the v1 one (30 days ago) is kept as the state
    # production was in when the window opened.
    assert [(e.action, e.to_version) for e in data.events] == [("store", "v1"),
                                                              ("promote", "v2")]
    assert data.events[1].at == hour0 + timedelta(hours=2)
    assert data.series() == ["v1", "v2"]
    assert {v["model_version"]: v["labelled"] for v in data.versions} == {"v1": 10, "v2": 20}
    only_old = load_report(ModelEvaluationDB(sqlite_url), days=1, model="other")
    assert only_old.buckets == [] and only_old.events == []


def marks(page: str, chart: str) -> list[str]:
    """The data-mark elements of one chart, as their opening tags."""
    svg = re.search(rf'<svg data-chart="{chart}".*?</svg>', page, re.S)
    assert svg is not None, f"no {chart} chart"
    return re.findall(r"<(?:circle|rect)[^>]*data-mark=[^>]*>", svg.group(0))


def test_page_has_one_mark_per_datum_and_is_self_contained(sqlite_url: str,
                                                           tmp_path: Path) -> None:
    seed(sqlite_url)
    out, png = tmp_path / "r.html", tmp_path / "r.png"
    data = write_report(ModelEvaluationDB(sqlite_url), out, png, days=1)
    page = out.read_text()
    labelled = [b for b in data.buckets if b.labelled]
    error = marks(page, "error")
    assert len(error) == 2 * len(labelled)  # MAE and RMSE per labelled bucket
    assert sum('data-series="v2"' in m for m in error) == 2 * sum(
        b.version == "v2" for b in labelled)
    assert len(marks(page, "coverage")) == len(data.buckets)
    assert len(marks(page, "volume")) == len(data.buckets)
    timeline = marks(page, "timeline")
    assert sum('data-mark="event"' in m for m in timeline) == 1  # v2's promote, in window
    assert sum('data-mark="span"' in m for m in timeline) == 2  # v1, then v2 in production
    assert "better offline" in page
    # Nothing fetched: no external URL but the SVG namespace, no src/href attributes.
    assert set(re.findall(r"https?://[^\s\"']+", page)) == {"http://www.w3.org/2000/svg"}
    assert not re.search(r"\s(?:src|href)=", page)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1200, 1400)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 50


def test_empty_store_renders_placeholders(sqlite_url: str, tmp_path: Path) -> None:
    out = tmp_path / "empty.html"
    write_report(ModelEvaluationDB(sqlite_url), out, tmp_path / "empty.png", days=3)
    page = out.read_text()
    assert "no labelled predictions in this window" in page
    assert "no promotions recorded" in page
    assert not marks(page, "volume")


def test_cli_report_writes_both_files(sqlite_url: str, tmp_path: Path) -> None:
    seed(sqlite_url)
    out, png = tmp_path / "cli.html", tmp_path / "cli.png"
    result = CliRunner().invoke(cli, ["report", "--output", str(out), "--png", str(png),
                                      "--days", "2"], env={"DATABASE_URL": sqlite_url})
    assert result.exit_code == 0, result.output
    assert "40 predictions (30 labelled) over 2 version(s)" in result.output
    assert out.stat().st_size > 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(cli, ["report", "--output", str(out), "--days", "0"],
                             env={"DATABASE_URL": sqlite_url})
    assert bad.exit_code == 2
