"""`predq register`: store a joblib, skops or ONNX model (or a freshly trained demo
model), optionally promoting it; `predq sign`: an artifact's HMAC for other clients."""

from __future__ import annotations

import math
import time
from pathlib import Path

import click

from modelstore import artifacts, formats
from producer import cli_ops
from producer.cli_context import state


def parse_metrics(pairs: tuple[str, ...]) -> dict[str, float]:
    """`name=value` pairs into a dict; a malformed pair is a usage error naming it."""
    metrics: dict[str, float] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not sep or not name.strip() or not math.isfinite(value):
            raise click.BadParameter(f"{pair!r}: expected name=number, e.g. rmse=3500.5",
                                     param_hint="--metric")
        metrics[name.strip()] = value
    return metrics


@click.command()
@click.argument("artifact", required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model-type", default=None, help="e.g. RandomForest (required with ARTIFACT).")
@click.option("--run-id", default=None, help="Training run id (required with ARTIFACT).")
@click.option("--metric", "metric_pairs", multiple=True, metavar="NAME=VALUE",
              help="A metric of the run (repeatable): --metric rmse=3500 --metric r2=0.92.")
@click.option("--model", default="default", show_default=True, help="Model name.")
@click.option("--model-version", default=None, help="Version (default: YYYYMMDD_HHMMSS).")
@click.option("--promote", is_flag=True,
              help="Make it production (confirmed by every worker unless --direct).")
@click.option("--direct/--via-workers", default=None,
              help="Write straight to the database, or send predq.store_model "
                   "(default: the task when the artifact can travel, else direct).")
@click.option("--demo", "demo_model", is_flag=True,
              help="Train and register a small car-price model instead of ARTIFACT.")
@click.option("--if-missing", is_flag=True,
              help="Do nothing when the model already has a production version.")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for the worker (and for promote confirmation).")
@click.option("--format", "fmt", type=click.Choice(formats.FORMATS), default=None,
              help="Artifact format (default: what ARTIFACT's bytes are; joblib for --demo). "
                   "Workers accept joblib through the queue only when signed "
                   "(PREDQ_SIGNING_KEY); skops and onnx need no key.")
def register(artifact: Path | None, model_type: str | None, run_id: str | None,
             metric_pairs: tuple[str, ...], model: str, model_version: str | None,
             promote: bool, direct: bool | None, demo_model: bool, if_missing: bool,
             timeout: float, fmt: str | None) -> None:
    """Register ARTIFACT (a joblib, skops or onnx file) or, with --demo, a freshly trained
    demo model."""
    metrics = parse_metrics(metric_pairs)
    cli_state = state()
    if if_missing:
        pointer = cli_state.db().production_pointer(model)
        if pointer is not None:
            click.echo(f"model {model!r} already serves {pointer.model_version} in production;"
                       " nothing registered")
            return
    source: object
    sample = None
    if demo_model:
        if artifact is not None:
            raise click.UsageError("give either ARTIFACT or --demo, not both")
        from producer.demo import train_demo_model
        from producer.sample import FEATURES, make_cars

        source, trained = train_demo_model()
        sample = make_cars(200, seed=7)[list(FEATURES)]
        metrics = {**trained, **metrics}
        model_type, run_id = model_type or "RandomForest", run_id or f"demo-{time.time_ns()}"
    elif artifact is None:
        raise click.UsageError("give an ARTIFACT file or --demo")
    else:
        source = artifact
    if not model_type or not run_id:
        raise click.UsageError("--model-type and --run-id are required with ARTIFACT")
    client = cli_state.client
    in_db_promote = promote and direct is True
    version = client.register_model(source, model_type, run_id, metrics=metrics,
                                    promote=in_db_promote, model=model,
                                    version=model_version, direct=direct, timeout=timeout,
                                    format=fmt, sample=sample)
    note = " and promoted it (workers switch at their next generation check)" \
        if in_db_promote else ""
    click.echo(f"registered model {model!r} version {version}{note}")
    if promote and not in_db_promote:
        cli_ops.confirm_switch(client.promote(version, model, timeout=min(timeout, 30.0)))


@click.command()
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def sign(artifact: Path) -> None:
    """Print ARTIFACT's signature for predq.store_model's `signature` (first key of
    PREDQ_SIGNING_KEY). The same with openssl:
    printf 'predq-artifact-v1:%s' "$(sha256sum FILE | cut -d' ' -f1)" |
    openssl dgst -sha256 -hmac "$KEY" -r | cut -d' ' -f1"""
    key = state().settings.signing_key
    if key is None:
        raise click.UsageError("PREDQ_SIGNING_KEY is not set: there is no key to sign with")
    click.echo(artifacts.sign(artifacts.sha256_hex(artifact.read_bytes()), key))
