"""The report as one self-contained HTML page: inline CSS and SVG, no fetches, no fonts.

Every plotted datum is an SVG element with `data-mark` (and `data-series`), so a browser
test can count what rendered; a tiny inline script records, per chart, how many marks got
a non-empty layout box (`data-rendered`) and where the chart landed on the page
(`data-box`). The page reads fine with scripts off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from html import escape

from producer.report import BucketStat, ReportData

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
           "#ff9da7", "#bab0ac", "#e15759")
ROLLBACK_COLOR = "#d62728"
PROMOTE_COLOR = "#333333"
WIDTH, HEIGHT = 960, 260
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 24, 36

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 6px}
.meta{color:#666;font-size:13px} table{border-collapse:collapse;font-size:13px;margin-top:8px}
td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left} .num{text-align:right}
svg{display:block;background:#fff;border:1px solid #e5e5e5}
svg text{font-size:11px;fill:#444} .axis{stroke:#999} .grid{stroke:#eee}
.event-line{stroke-dasharray:4 3;stroke-width:1} .empty{font-size:14px;fill:#999}
"""
_SCRIPT = """
document.querySelectorAll('svg[data-chart]').forEach(function (svg) {
  var drawn = 0;
  svg.querySelectorAll('[data-mark]').forEach(function (m) {
    var b = m.getBBox(); if (b.width > 0 && b.height > 0) { drawn++; }
  });
  svg.setAttribute('data-rendered', String(drawn));
  var r = svg.getBoundingClientRect();
  svg.setAttribute('data-box', [r.left, r.top + window.scrollY, r.width, r.height]
    .map(Math.round).join(','));
});
document.body.setAttribute('data-report-ready', '1');
"""


def colors(keys: Sequence[str]) -> dict[str, str]:
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 and round steps up to at least `top`."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


class Frame:
    """Maps time and value to pixels inside one chart's plot area."""

    def __init__(self, t0: datetime, t1: datetime, y_top: float) -> None:
        self.t0, self.span = t0, max((t1 - t0).total_seconds(), 1.0)
        self.y_top = y_top if y_top > 0 else 1.0
        self.w, self.h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(self, t: datetime) -> float:
        return round(LEFT + self.w * (t - self.t0).total_seconds() / self.span, 2)

    def y(self, v: float) -> float:
        return round(TOP + self.h * (1 - v / self.y_top), 2)

    def px(self, seconds: float) -> float:
        return self.w * seconds / self.span


def _time_axis(frame: Frame) -> list[str]:
    out = [f'<line class="axis" x1="{LEFT}" y1="{TOP + frame.h}" x2="{LEFT + frame.w}" '
           f'y2="{TOP + frame.h}"/>']
    long_span = frame.span > 2 * 86_400
    for i in range(6):
        t = frame.t0 + timedelta(seconds=frame.span * i / 5)
        label = t.strftime("%m-%d %H:%M" if long_span or i == 0 else "%H:%M")
        anchor = "start" if i == 0 else "end" if i == 5 else "middle"
        out.append(f'<text x="{frame.x(t)}" y="{HEIGHT - 12}" text-anchor="{anchor}">'
                   f"{label}</text>")
    return out


def _value_axis(frame: Frame, ticks: list[float], label: Callable[[float], str]) -> list[str]:
    out = []
    for v in ticks:
        y = frame.y(v)
        out.append(f'<line class="grid" x1="{LEFT}" y1="{y}" x2="{LEFT + frame.w}" y2="{y}"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4}" text-anchor="end">{label(v)}</text>')
    return out


def _legend(entries: Sequence[tuple[str, str, str]]) -> list[str]:
    """(label, color, dash) rows at the right of the plot."""
    out = []
    for i, (label, color, dash) in enumerate(entries):
        y = TOP + 8 + 18 * i
        x = WIDTH - RIGHT + 16
        out.append(f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{color}" '
                   f'stroke-width="3" stroke-dasharray="{dash}"/>')
        out.append(f'<text x="{x + 28}" y="{y + 4}">{escape(label)}</text>')
    return out


def _event_lines(frame: Frame, data: ReportData) -> list[str]:
    out = []
    for e in data.events:
        if e.at < frame.t0:
            continue
        x, color = frame.x(e.at), ROLLBACK_COLOR if e.action == "rollback" else PROMOTE_COLOR
        mark = "↩" if e.action == "rollback" else "→"
        out.append(f'<line class="event-line" x1="{x}" y1="{TOP}" x2="{x}" '
                   f'y2="{TOP + frame.h}" stroke="{color}"/>')
        out.append(f'<text x="{x + 3}" y="{TOP - 6}" fill="{color}">'
                   f"{mark}{escape(e.to_version)}</text>")
    return out


def _svg(chart: str, body: list[str], title: str) -> str:
    return (f'<svg data-chart="{chart}" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
            f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-label="{escape(title)}">' + "".join(body) + "</svg>")


def _empty(chart: str, title: str, message: str) -> str:
    return _svg(chart, [f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" '
                        f'text-anchor="middle">{escape(message)}</text>'], title)


def _series_points(data: ReportData, value: Callable[[BucketStat], float | None]
                   ) -> dict[str, list[tuple[datetime, float, BucketStat]]]:
    """Per series: (bucket middle, value, bucket) for buckets where `value` is defined."""
    half = timedelta(seconds=data.bucket_s / 2)
    out: dict[str, list[tuple[datetime, float, BucketStat]]] = {}
    for b in sorted(data.buckets, key=lambda b: b.start):
        v = value(b)
        if v is not None:
            out.setdefault(data.key(b.model, b.version), []).append((b.start + half, v, b))
    return out


def _polyline(frame: Frame, key: str, metric: str, color: str, dash: str,
              points: list[tuple[datetime, float, BucketStat]], label: str) -> list[str]:
    path = " ".join(f"{'M' if i == 0 else 'L'}{frame.x(t)},{frame.y(v)}"
                    for i, (t, v, _) in enumerate(points))
    out = [f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2" '
           f'stroke-dasharray="{dash}" data-line="{escape(key)}"/>']
    for t, v, b in points:
        tip = f"{key} {label} {fmt(v)} · {b.start:%Y-%m-%d %H:%M} · {b.labelled}/{b.predictions}"
        out.append(f'<circle data-mark="point" data-series="{escape(key)}" '
                   f'data-metric="{metric}" cx="{frame.x(t)}" cy="{frame.y(v)}" r="3.5" '
                   f'fill="{color}"><title>{escape(tip)}</title></circle>')
    return out


def line_chart(data: ReportData, chart: str, title: str,
               metrics: Sequence[tuple[str, str, str, Callable[[BucketStat], float | None]]],
               y_label: Callable[[float], str], fixed_top: float | None = None) -> str:
    """metrics: (name, label, dash, value) drawn for every series."""
    per_metric = [(name, label, dash, _series_points(data, fn))
                  for name, label, dash, fn in metrics]
    values = [v for *_, pts in per_metric for series in pts.values() for _, v, _ in series]
    if not values:
        return _empty(chart, title, "no labelled predictions in this window")
    ticks = nice_ticks(fixed_top or max(values))
    t0, t1 = data.x_range()
    frame = Frame(t0, t1, ticks[-1])
    palette = colors(data.series())
    body = _value_axis(frame, ticks, y_label) + _time_axis(frame) + _event_lines(frame, data)
    legend: list[tuple[str, str, str]] = []
    for name, label, dash, pts in per_metric:
        for key, series in pts.items():
            body += _polyline(frame, key, name, palette[key], dash, series, label)
            legend.append((f"{key} {label}" if len(metrics) > 1 else key, palette[key], dash))
    return _svg(chart, body + _legend(legend), title)


def volume_chart(data: ReportData) -> str:
    title = "Prediction volume"
    if not data.buckets:
        return _empty("volume", title, "no predictions in this window")
    stacks: dict[datetime, list[BucketStat]] = {}
    for b in data.buckets:
        stacks.setdefault(b.start, []).append(b)
    ticks = nice_ticks(max(sum(b.predictions for b in s) for s in stacks.values()))
    t0, t1 = data.x_range()
    frame = Frame(t0, t1, ticks[-1])
    palette = colors(data.series())
    body = (_value_axis(frame, ticks, lambda v: f"{v:,.0f}") + _time_axis(frame)
            + _event_lines(frame, data))
    order = {k: i for i, k in enumerate(data.series())}
    width = max(frame.px(data.bucket_s) * 0.85, 1.0)
    for start, stack in sorted(stacks.items()):
        base = 0
        for b in sorted(stack, key=lambda b: order[data.key(b.model, b.version)]):
            key = data.key(b.model, b.version)
            y_top, y_base = frame.y(base + b.predictions), frame.y(base)
            body.append(f'<rect data-mark="bar" data-series="{escape(key)}" '
                        f'x="{frame.x(start)}" y="{y_top}" width="{width:.2f}" '
                        f'height="{max(y_base - y_top, 0.5):.2f}" fill="{palette[key]}">'
                        f"<title>{escape(key)}: {b.predictions} predictions · "
                        f"{start:%Y-%m-%d %H:%M}</title></rect>")
            base += b.predictions
    legend = [(k, palette[k], "") for k in data.series() if any(
        data.key(b.model, b.version) == k for b in data.buckets)]
    return _svg("volume", body + _legend(legend), title)


def _production_spans(data: ReportData, t1: datetime) -> list[tuple[str, datetime, datetime]]:
    """(series, from, to): which version was production when, from the history."""
    spans: list[tuple[str, datetime, datetime]] = []
    current: dict[str, tuple[str, datetime]] = {}
    for e in data.events:
        previous = current.get(e.model)
        if previous is not None:
            spans.append((previous[0], previous[1], e.at))
        current[e.model] = (data.key(e.model, e.to_version), e.at)
    spans += [(key, start, t1) for key, start in current.values()]
    return spans


def timeline_chart(data: ReportData) -> str:
    title = "Promotion timeline"
    if not data.events:
        return _empty("timeline", title, "no promotions recorded")
    t0, t1 = data.x_range()
    frame = Frame(t0, t1, 1.0)
    keys = data.series()
    palette = colors(keys)
    lane = frame.h / max(len(keys), 1)
    body = _time_axis(frame)
    for i, key in enumerate(keys):
        body.append(f'<text x="{LEFT - 6}" y="{TOP + lane * (i + 0.5) + 4}" '
                    f'text-anchor="end">{escape(key)}</text>')
    for key, start, end in _production_spans(data, t1):
        x0, x1 = frame.x(max(start, t0)), frame.x(min(end, t1))
        y = TOP + lane * keys.index(key) + lane * 0.3
        body.append(f'<rect data-mark="span" data-series="{escape(key)}" x="{x0}" y="{y:.2f}" '
                    f'width="{max(x1 - x0, 2):.2f}" height="{lane * 0.4:.2f}" '
                    f'fill="{palette[key]}" opacity="0.55"><title>{escape(key)} in production '
                    f"{start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M}</title></rect>")
    for e in data.events:
        if e.at < data.since:
            continue
        key = data.key(e.model, e.to_version)
        color = ROLLBACK_COLOR if e.action == "rollback" else PROMOTE_COLOR
        tip = (f"{e.action} {e.from_version or '∅'} → {e.to_version} (generation "
               f"{e.generation}) by {e.by or '?'} at {e.at:%Y-%m-%d %H:%M:%S}"
               + (f": {e.reason}" if e.reason else ""))
        body.append(f'<circle data-mark="event" data-action="{escape(e.action)}" '
                    f'data-series="{escape(key)}" cx="{frame.x(e.at)}" '
                    f'cy="{TOP + lane * (keys.index(key) + 0.5):.2f}" r="6" fill="{color}">'
                    f"<title>{escape(tip)}</title></circle>")
    legend = [("promote", PROMOTE_COLOR, ""), ("rollback", ROLLBACK_COLOR, "")]
    return _svg("timeline", body + _legend(legend), title)


def _versions_table(data: ReportData) -> str:
    head = ("<tr><th>model</th><th>version</th><th class=num>predictions</th>"
            "<th class=num>labelled</th><th class=num>coverage</th><th class=num>MAE</th>"
            "<th class=num>RMSE</th></tr>")
    rows = "".join(
        f"<tr><td>{escape(str(v['model_name']))}</td><td>{escape(str(v['model_version']))}</td>"
        f"<td class=num>{v['predictions']:,}</td><td class=num>{v['labelled']:,}</td>"
        f"<td class=num>{v['coverage']:.1%}</td><td class=num>{fmt(v['mae'])}</td>"
        f"<td class=num>{fmt(v['rmse'])}</td></tr>" for v in data.versions)
    return f"<table>{head}{rows}</table>" if rows else "<p class=meta>no predictions</p>"


def _events_table(data: ReportData) -> str:
    rows = "".join(
        f"<tr><td>{e.at:%Y-%m-%d %H:%M:%S}</td><td>{escape(e.model)}</td>"
        f"<td>{escape(e.action)}</td><td>{escape(e.from_version or '∅')} → "
        f"{escape(e.to_version)}</td><td class=num>{e.generation}</td><td>{escape(e.by or '')}</td>"
        f"<td>{escape(e.reason or '')}</td></tr>" for e in reversed(data.events))
    head = ("<tr><th>when</th><th>model</th><th>action</th><th>versions</th>"
            "<th class=num>generation</th><th>by</th><th>reason</th></tr>")
    return f"<table>{head}{rows}</table>" if rows else ""


def _section(title: str, body: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{body}</section>"


def render(data: ReportData) -> str:
    """The whole page."""
    scope = f"model {data.model}" if data.model else "all models"
    sections = [
        _section("Live error per version (MAE solid, RMSE dashed)", line_chart(
            data, "error", "Live error per version",
            [("mae", "MAE", "", lambda b: b.mae), ("rmse", "RMSE", "6 4", lambda b: b.rmse)],
            fmt)),
        _section("Label coverage per version", line_chart(
            data, "coverage", "Label coverage per version",
            [("coverage", "coverage", "", lambda b: b.coverage)],
            lambda v: f"{v:.0%}", fixed_top=1.0)),
        _section("Prediction volume", volume_chart(data)),
        _section("Promotion timeline", timeline_chart(data) + _events_table(data)),
        _section("Versions in this window", _versions_table(data)),
    ]
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<title>predq report</title>"
            f"<style>{_CSS}</style></head><body><h1>predq report</h1>"
            f'<p class="meta">{escape(scope)} · {data.since:%Y-%m-%d %H:%M} → '
            f"{data.until:%Y-%m-%d %H:%M} (database time) · {data.bucket_s // 60}-minute "
            f"buckets</p>" + "".join(sections) + f"<script>{_SCRIPT}</script></body></html>")
