"""`predq report` opened in headless Chromium (Debian's chromium, installed by `make test`):
after the page's script ran, every chart has one laid-out mark per datum, and a screenshot
shows each version's colour inside each chart's box. No network: file:// only."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import update

from modelstore import schema
from modelstore.db import ModelEvaluationDB
from producer.report import db_now, write_report
from producer.report_html import PALETTE, PROMOTE_COLOR
from tests.conftest import IN_CI

H = schema.promotion_history
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio", "--force-device-scale-factor=1",
         "--window-size=1100,1800")
HOURS = 48


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        message = ("chromium is not installed (`make test` installs Debian's chromium and "
                   "chromium-driver)")
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def run_chromium(tmp: Path, *args: str) -> str:
    done = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def seed(url: str) -> None:
    """v1 for 24 hours then v2 for 24 (3 rows an hour, 2 labelled), v2 promoted at hour 24."""
    db = ModelEvaluationDB(url)
    for v in ("v1", "v2"):
        db.store_model(f"run-{v}", v, "Dummy", f"bytes-{v}".encode(), describe=False,
                       is_production=v == "v1")
    with db.engine.connect() as conn:
        hour0 = db_now(conn).replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS)
    rows = []
    for h in range(HOURS):
        version, error = ("v1", 50.0 + h) if h < HOURS // 2 else ("v2", 200.0 - h)
        for k in range(3):
            rows.append({"request_id": f"{h}-{k}", "model_version": version,
                         "input_features": {"k": k}, "predicted_value": 1000.0 + error,
                         "actual_value": 1000.0 if k < 2 else None,
                         "prediction_time": hour0 + timedelta(hours=h, minutes=10 * k)})
    db.store_predictions(rows)
    db.set_production_model("v2", reason="lower offline rmse")
    with db.engine.begin() as conn:
        conn.execute(update(H).where(H.c.to_version == "v1").values(
            promoted_at=hour0 - timedelta(hours=1)))
        conn.execute(update(H).where(H.c.to_version == "v2").values(
            promoted_at=hour0 + timedelta(hours=HOURS // 2)))


class Charts(HTMLParser):
    """Per chart: its attributes, and its data marks as (mark, series) pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, str]] = {}
        self.marks: dict[str, list[tuple[str, str]]] = {}
        self.body: dict[str, str] = {}
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        elif tag == "svg" and "data-chart" in a:
            self._current = a["data-chart"]
            self.charts[self._current] = a
            self.marks[self._current] = []
        elif self._current and "data-mark" in a:
            self.marks[self._current].append((a["data-mark"], a.get("data-series", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._current = None


def color_pixels(image: Image.Image, box: tuple[int, int, int, int], hex_color: str) -> int:
    target = tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    region = image.crop(box).convert("RGB")
    histogram = region.getcolors(maxcolors=1 << 20) or []
    return sum(n for n, rgb in histogram
               if all(abs(c - t) <= 12 for c, t in zip(rgb, target, strict=True)))


@pytest.fixture
def page(pg_url: str, tmp_path: Path) -> Path:
    seed(pg_url)
    out = tmp_path / "report.html"
    write_report(ModelEvaluationDB(pg_url), out, tmp_path / "report.png", days=3)
    return out


def test_charts_render_in_headless_chromium(page: Path, tmp_path: Path) -> None:
    dom = Charts()
    dom.feed(run_chromium(tmp_path, "--dump-dom", page.as_uri()))
    assert dom.body.get("data-report-ready") == "1", "the page's script did not run"
    assert set(dom.charts) == {"error", "coverage", "volume", "timeline"}
    half = HOURS // 2
    expected = {  # (mark, series) -> count, from the seeded data: hourly buckets
        "error": {("point", "v1"): 2 * half, ("point", "v2"): 2 * half},
        "coverage": {("point", "v1"): half, ("point", "v2"): half},
        "volume": {("bar", "v1"): half, ("bar", "v2"): half},
        "timeline": {("span", "v1"): 1, ("span", "v2"): 1, ("event", "v1"): 1,
                     ("event", "v2"): 1},
    }
    for chart, counts in expected.items():
        got: dict[tuple[str, str], int] = {}
        for mark in dom.marks[chart]:
            got[mark] = got.get(mark, 0) + 1
        assert got == counts, chart
        # Laid out by the browser: every mark has a non-empty box.
        assert dom.charts[chart]["data-rendered"] == str(sum(counts.values())), chart

    shot = tmp_path / "report-shot.png"
    run_chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    with Image.open(shot) as image:
        for chart in ("error", "coverage", "volume"):
            x, y, w, h = (int(v) for v in dom.charts[chart]["data-box"].split(","))
            assert w > 0 and h > 0 and y + h <= image.height, chart
            for version, color in (("v1", PALETTE[0]), ("v2", PALETTE[1])):
                assert color_pixels(image, (x, y, x + w, y + h), color) > 50, (chart, version)
        x, y, w, h = (int(v) for v in dom.charts["timeline"]["data-box"].split(","))
        assert color_pixels(image, (x, y, x + w, y + h), PROMOTE_COLOR) > 50
