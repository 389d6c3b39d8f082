"""`predq demo`: the whole loop on one machine, no services needed.

SQLite + kombu's filesystem broker + a SQLite result backend under a work directory, two
real worker subprocesses. With DATABASE_URL and PREDQ_BROKER_URL set, the same steps run
against those services instead.
"""

from __future__ import annotations

import math
import shutil
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from sklearn.pipeline import Pipeline

from modelstore.engine import redact_url
from modelstore.errors import PredqError
from modelstore.settings import Settings
from producer import tables
from producer.client import PredqClient
from producer.sample import FEATURES, TARGET, make_cars, train_pipeline
from producer.worker_procs import WorkerGroup

MARKER = ".predq-demo"
"""A file the demo writes in its directory, so it only ever wipes a directory of its own."""


class DemoError(PredqError):
    """Raised when a demo step fails (the message names the step)."""


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path
    rows: int = 3000
    model: str | None = None
    """None: "default" on the embedded services (workers preload it, so every process
    shows the switch), "demo" on real services (never touch a real "default")."""
    workers: int = 2
    threads: int = 8
    chunk_size: int = 500
    start_timeout_s: float = 90.0

    @property
    def model_name(self) -> str:
        return self.model or "default"


def train_demo_model(seed: int = 0, n_estimators: int = 30, max_depth: int = 10,
                     rows: int = 4000) -> tuple[Pipeline, dict[str, float]]:
    """A small car-price RandomForest pipeline and its holdout metrics (rmse, mae, r2)."""
    train, holdout = make_cars(rows, seed=seed), make_cars(1000, seed=seed + 1000)
    pipe = train_pipeline(train, n_estimators=n_estimators, max_depth=max_depth, seed=seed)
    err = pipe.predict(holdout[list(FEATURES)]) - holdout[TARGET].to_numpy()
    total = float(((holdout[TARGET] - holdout[TARGET].mean()) ** 2).sum())
    metrics = {"rmse": math.sqrt(float((err ** 2).mean())), "mae": float(abs(err).mean()),
               "r2": 1.0 - float((err ** 2).sum()) / total}
    return pipe, metrics


def demo_environment(workdir: Path, base: Mapping[str, str]) -> tuple[dict[str, str], bool]:
    """(environment, embedded): embedded SQLite/filesystem URLs unless real services are set."""
    env = dict(base)
    if env.get("DATABASE_URL") and env.get("PREDQ_BROKER_URL"):
        return env, False
    root = workdir.resolve()
    env.update({
        "DATABASE_URL": f"sqlite:///{root / 'predq.db'}",
        "PREDQ_BROKER_URL": f"filesystem://{root / 'broker'}",
        "PREDQ_RESULT_BACKEND": f"db+sqlite:///{root / 'results.db'}",
        "PREDQ_MODEL_DIR": str(root / "models"),
        "PREDQ_SPOOL_DIR": str(root / "spool"),
        "PREDQ_ARTIFACT_CACHE_DIR": str(root / "models" / ".cache"),
    })
    return env, True


def prepare_workdir(workdir: Path) -> None:
    """Wipe the demo directory (only one the demo made: it carries MARKER) and recreate it."""
    if workdir.exists():
        if not workdir.is_dir() or (any(workdir.iterdir()) and not (workdir / MARKER).exists()):
            raise DemoError(f"--dir {workdir}: exists and is not a predq demo directory "
                            f"(no {MARKER} file); choose another directory")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("created by `predq demo`; wiped by the next run\n")


def run_demo(cfg: DemoConfig, console: Console, base_env: Mapping[str, str]
             ) -> list[dict[str, Any]]:
    """Run every step, printing as it goes; returns the per-version stats."""
    started = time.monotonic()
    prepare_workdir(cfg.workdir)
    env, embedded = demo_environment(cfg.workdir, base_env)
    settings = Settings.from_env(env)
    cfg = replace(cfg, model=cfg.model or ("default" if embedded else "demo"))
    console.rule("[bold]predq demo")
    _describe_mode(console, settings, embedded)
    with PredqClient(settings) as client:
        v1 = _register_v1(console, client, cfg)
        names = [f"demo{i + 1}" for i in range(cfg.workers)]
        console.print(f"[bold]3.[/] starting {cfg.workers} workers ({', '.join(names)}, "
                      f"threads pool x{cfg.threads})")
        with WorkerGroup(env, names, cfg.workdir / "logs", cfg.threads) as group:
            group.wait_ready(client.app, cfg.start_timeout_s)
            _show_serving(console, client, cfg.model_name, "Serving after start", v1)
            _predict_and_label(console, client, cfg, seed=101, step="4")
            v2 = _register_v2(console, client, cfg)
            _promote(console, client, cfg, v2)
            _predict_and_label(console, client, cfg, seed=202, step="7")
        stats = client.db.prediction_stats(cfg.model_name)
    console.print(tables.stats_table(stats))
    console.print(f"[bold green]demo finished in {time.monotonic() - started:.1f} s[/]; "
                  f"files in {cfg.workdir}")
    return stats


def _describe_mode(console: Console, settings: Settings, embedded: bool) -> None:
    kind = "embedded (no services)" if embedded else "real services"
    console.print(f"mode: {kind}\n  database: {redact_url(settings.database_url)}\n"
                  f"  broker:   {redact_url(settings.broker_url)}\n"
                  f"  results:  {redact_url(settings.result_backend)}")


def _register_v1(console: Console, client: PredqClient, cfg: DemoConfig) -> str:
    console.print("[bold]1.[/] training v1 (RandomForest, 30 trees) on generated car prices")
    pipe, metrics = train_demo_model(seed=1, n_estimators=30, max_depth=10)
    version = client.register_model(pipe, "RandomForest", run_id=f"demo-v1-{time.time_ns()}",
                                    metrics=metrics, promote=True, model=cfg.model_name,
                                    direct=True)
    console.print(f"[bold]2.[/] registered and promoted v1 = [cyan]{version}[/] straight into "
                  f"the store (holdout RMSE {metrics['rmse']:,.0f})")
    return version


def _register_v2(console: Console, client: PredqClient, cfg: DemoConfig) -> str:
    console.print("[bold]6.[/] training v2 (40 trees, deeper) and registering it through "
                  "the predq.store_model task as skops (the broker is not trusted with pickle)")
    pipe, metrics = train_demo_model(seed=2, n_estimators=40, max_depth=12)
    version = client.register_model(pipe, "RandomForest", run_id=f"demo-v2-{time.time_ns()}",
                                    metrics=metrics, model=cfg.model_name, timeout=120.0,
                                    format="skops")
    console.print(f"   registered v2 = [cyan]{version}[/] (holdout RMSE "
                  f"{metrics['rmse']:,.0f})")
    return version


def _show_serving(console: Console, client: PredqClient, model: str, title: str,
                  highlight: str) -> None:
    console.print(tables.serving_table(client.serving(model), title, highlight))


def _predict_and_label(console: Console, client: PredqClient, cfg: DemoConfig, seed: int,
                       step: str) -> None:
    cars = make_cars(cfg.rows, seed=seed)
    features = cars[list(FEATURES)]
    console.print(f"[bold]{step}.[/] predicting {len(cars):,} rows "
                  f"({math.ceil(len(cars) / cfg.chunk_size)} predict_batch tasks) and 3 "
                  "single predicts")
    results = client.predict_many(features, chunk_size=cfg.chunk_size, model=cfg.model_name,
                                  progress=console.is_terminal)
    singles = [client.predict(row, model=cfg.model_name)
               for row in features.head(3).to_dict(orient="records")]
    console.print(tables.predictions_table(singles, "Single predictions"))
    _summarize(console, results)
    actuals = _actuals(results, cars)
    outcome = client.backfill(actuals)
    console.print(f"[bold]{int(step) + 1}.[/] backfilled {outcome['updated']:,} actual prices "
                  f"({len(outcome['unknown'])} unknown request ids)")


def _summarize(console: Console, results: list[dict[str, Any]]) -> None:
    errors = [r for r in results if "error" in r]
    versions = Counter(r.get("model_version") for r in results if "error" not in r)
    served = ", ".join(f"{v}: {n:,}" for v, n in versions.items())
    console.print(f"   {len(results):,} results, {len(errors)} errors; by version: {served}")
    if errors:
        raise DemoError(f"predict step: {len(errors)} rows failed, first: {errors[0]['error']}")


def _actuals(results: list[dict[str, Any]], cars: pd.DataFrame) -> dict[str, float]:
    prices = cars[TARGET].tolist()
    return {r["request_id"]: float(price) for r, price in zip(results, prices, strict=True)}


def _promote(console: Console, client: PredqClient, cfg: DemoConfig, version: str) -> None:
    _show_serving(console, client, cfg.model_name, "Serving before promote", version)
    report = client.promote(version, cfg.model_name, timeout=15.0, reason="predq demo")
    console.print(f"   {tables.promote_summary(report)}")
    _show_serving(console, client, cfg.model_name, "Serving after promote", version)
    problem = report.problem()
    if problem:
        raise DemoError(f"promote step: {problem}")
