"""The report as one PNG (matplotlib, Agg canvas; no pyplot global state): four panels on
a shared time axis: live error, label coverage, volume, promotion timeline."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

from producer.report import BucketStat, ReportData
from producer.report_html import PROMOTE_COLOR, ROLLBACK_COLOR, colors

SeriesPoints = dict[str, tuple[list[datetime], list[float]]]


def _points(data: ReportData, value: Callable[[BucketStat], float | None]) -> SeriesPoints:
    half = timedelta(seconds=data.bucket_s / 2)
    out: SeriesPoints = {}
    for b in sorted(data.buckets, key=lambda b: b.start):
        v = value(b)
        if v is not None:
            xs, ys = out.setdefault(data.key(b.model, b.version), ([], []))
            xs.append(b.start + half)
            ys.append(v)
    return out


def _event_lines(ax: Any, data: ReportData) -> None:
    for e in data.events:
        if e.at >= data.since:
            color = ROLLBACK_COLOR if e.action == "rollback" else PROMOTE_COLOR
            ax.axvline(e.at, color=color, linestyle="--", linewidth=1, alpha=0.7)


def _message(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#888")


def _error_panel(ax: Any, data: ReportData, palette: dict[str, str]) -> None:
    ax.set_title("Live error per version (MAE solid, RMSE dashed)", loc="left")
    mae, rmse = _points(data, lambda b: b.mae), _points(data, lambda b: b.rmse)
    if not mae:
        _message(ax, "no labelled predictions in this window")
    for key, (xs, ys) in mae.items():
        ax.plot(xs, ys, marker="o", markersize=4, color=palette[key], label=f"{key} MAE")
    for key, (xs, ys) in rmse.items():
        ax.plot(xs, ys, linestyle="--", marker=".", color=palette[key], label=f"{key} RMSE")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.4g}"))
    ax.set_ylim(bottom=0)


def _coverage_panel(ax: Any, data: ReportData, palette: dict[str, str]) -> None:
    ax.set_title("Label coverage per version", loc="left")
    for key, (xs, ys) in _points(data, lambda b: b.coverage).items():
        ax.plot(xs, ys, marker="o", markersize=4, color=palette[key], label=key)
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))


def _volume_panel(ax: Any, data: ReportData, palette: dict[str, str]) -> None:
    ax.set_title("Prediction volume", loc="left")
    if not data.buckets:
        _message(ax, "no predictions in this window")
        return
    width = data.bucket_s / 86_400 * 0.85
    base: dict[datetime, int] = {}
    for key in data.series():
        rows = [b for b in data.buckets if data.key(b.model, b.version) == key]
        if not rows:
            continue
        xs = [date2num(b.start) for b in rows]
        bottoms = [base.get(b.start, 0) for b in rows]
        ax.bar(xs, [b.predictions for b in rows], width=width, bottom=bottoms, align="edge",
               color=palette[key], label=key)
        for b in rows:
            base[b.start] = base.get(b.start, 0) + b.predictions


def _timeline_panel(ax: Any, data: ReportData, palette: dict[str, str], t1: datetime) -> None:
    ax.set_title("Promotion timeline", loc="left")
    keys = data.series()
    if not data.events:
        _message(ax, "no promotions recorded")
    current: dict[str, tuple[str, datetime]] = {}
    spans: list[tuple[str, datetime, datetime]] = []
    for e in data.events:
        if e.model in current:
            spans.append((*current[e.model], e.at))
        current[e.model] = (data.key(e.model, e.to_version), e.at)
    spans += [(k, start, t1) for k, start in current.values()]
    t0 = data.x_range()[0]
    for key, start, end in spans:
        lo = max(start, t0)
        ax.broken_barh([(date2num(lo), max(date2num(end) - date2num(lo), 1e-4))],
                       (keys.index(key) - 0.2, 0.4), facecolors=palette[key], alpha=0.55)
    for e in data.events:
        if e.at >= data.since:
            color = ROLLBACK_COLOR if e.action == "rollback" else PROMOTE_COLOR
            y = keys.index(data.key(e.model, e.to_version))
            ax.plot([e.at], [y], marker="o", markersize=9, color=color)
            ax.annotate(e.action, (date2num(e.at), y), xytext=(6, 6),
                        textcoords="offset points", fontsize=8, color=color)
    ax.set_yticks(range(len(keys)), labels=keys)
    ax.set_ylim(-0.7, max(len(keys), 1) - 0.3)


def render(data: ReportData, path: Path) -> None:
    """Write the four panels to `path` as a PNG."""
    fig = Figure(figsize=(12, 14), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(4, 1, sharex=True, height_ratios=(3, 2, 2, 2))
    palette = colors(data.series())
    t0, t1 = data.x_range()
    _error_panel(axes[0], data, palette)
    _coverage_panel(axes[1], data, palette)
    _volume_panel(axes[2], data, palette)
    _timeline_panel(axes[3], data, palette, t1)
    for ax in axes[:3]:
        _event_lines(ax, data)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    for ax in axes:
        ax.set_axisbelow(True)
        ax.grid(True, color="#eeeeee")
    locator = AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes[-1].set_xlim(t0, t1)
    scope = f"model {data.model}" if data.model else "all models"
    fig.suptitle(f"predq report: {scope}, {data.since:%Y-%m-%d %H:%M} to "
                 f"{data.until:%Y-%m-%d %H:%M} (database time), "
                 f"{data.bucket_s // 60}-minute buckets", fontsize=12)
    fig.savefig(path, format="png")
