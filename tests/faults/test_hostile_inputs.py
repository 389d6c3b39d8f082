"""Invariant 5 through the raw wire: hostile inputs sent by a plain Celery client that knows
only task names (and by hand-made messages). Each gets a clear per-item error naming the
field, or a clear rejection; the worker stays healthy; no partial or garbage rows."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.faults import report
from tests.faults.dbcheck import query, wait_until
from tests.faults.hostile_cases import CASES, GOOD, ROW_CAP, Case
from tests.faults.report import ReportFn
from tests.faults.stack import fault_env, marker_pickle, publish_raw
from tests.support import models
from tests.support.workerproc import WorkerProcess, client_app, running_workers

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

GROUP = "Hostile inputs through the raw wire"
report.describe_group(
    GROUP, f"{len(CASES)} hostile inputs sent by a plain Celery client that knows only task "
    "names (and hand-made pickle / non-JSON / unknown-task messages): each answered with a "
    "per-item error naming the field, a rejection, or (valid edge inputs) a prediction;",
    "After every case: the next good request succeeded, the worker process lived, the queue "
    "drained, the exact set of logged request_ids was checked (no partial or garbage rows), "
    "and the pickle's marker file never appeared.")


@dataclass
class Stack:
    url: str
    app: Celery
    worker: WorkerProcess
    tmp: Path
    expected: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def stack(module_pg_url: str, module_redis_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("hostile")
    models.register(module_pg_url, "v1")
    env = fault_env(module_pg_url, module_redis_url, tmp,
                    PREDQ_MAX_ROWS_PER_TASK=str(ROW_CAP))
    app = client_app(env)
    try:
        with running_workers(env, tmp, names=("hostile",), app=app) as (worker,):
            yield Stack(module_pg_url, app, worker, tmp)
    finally:
        app.close()


def _logged(url: str) -> dict[str, tuple[Any, ...]]:
    rows = query(url, "SELECT request_id, model_version, input_features, predicted_value "
                      "FROM model_predictions")
    return {r[0]: tuple(r[1:]) for r in rows}


def _send(stack: Stack, case: Case) -> dict[str, Any]:
    """The task's answer; a task that raised instead of answering is shown as `raised`."""
    result = stack.app.send_task(case.task, args=case.args, kwargs=case.kwargs)
    try:
        value = result.get(timeout=60)
    except Exception as exc:  # noqa: BLE001 - the measured outcome of this case
        return {"raised": f"task raised {type(exc).__name__}: {exc}"}
    assert isinstance(value, dict), f"{case.name}: not an object: {value!r:.200}"
    return value


def _errors(value: dict[str, Any]) -> list[str]:
    if "raised" in value:
        return []
    found = [value["error"]] if value.get("error") else []
    found += [r["error"] for r in value.get("results", []) if isinstance(r, dict) and
              r.get("error")]
    return found


_REJECTION = {"pickle": "Refusing to deserialize untrusted content",
              "not-json": "Can't decode message body",
              "unknown-task": "Received unregistered task of type 'predq.nope'"}


def _raw(stack: Stack, case: Case) -> str:
    """Publish a hostile message by hand; returns the worker's log line rejecting it."""
    assert case.raw is not None
    needle = _REJECTION[case.raw]
    task_id = f"raw-{case.name}-{uuid.uuid4().hex[:8]}"
    offset = stack.worker.log_path.stat().st_size
    if case.raw == "pickle":
        marker = stack.tmp / "PWNED-by-message"
        publish_raw(stack.app, marker_pickle(marker), "application/x-python-serialize",
                    "predq.predict", task_id)
    elif case.raw == "not-json":
        publish_raw(stack.app, b"{not json at all\xff", "application/json", "predq.predict",
                    task_id, content_encoding="utf-8")
    else:
        body = json.dumps([[], {"features": GOOD[0]}, {}]).encode()
        publish_raw(stack.app, body, "application/json", "predq.nope", task_id, "utf-8")
    line = ""

    def rejected() -> bool:
        nonlocal line
        with stack.worker.log_path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
        line = next((ln for ln in text.splitlines() if needle in ln), "")
        return bool(line)

    wait_until(rejected, timeout=15)
    return line.split("] ", 1)[-1]


def _queue_drained(stack: Stack) -> bool:
    client = stack.app.connection_for_write().default_channel.client
    return wait_until(lambda: client.llen("predq") == 0 and client.hlen("unacked") == 0,
                      timeout=15)


def _shown(case: Case, errors: list[str], value: dict[str, Any]) -> str:
    if errors:
        return errors[0]
    if case.raw:
        return "(no rejection logged)"
    return str(value.get("raised", "(valid input: predicted and logged)"))


PARAMS = [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=c.bug)]
                       if c.bug else []) for c in CASES]


@pytest.mark.parametrize("case", PARAMS)
def test_hostile_input(stack: Stack, case: Case, fault_report: ReportFn) -> None:
    before = _logged(stack.url)
    value: dict[str, Any] = {}
    if case.raw:
        answer = _raw(stack, case)
        errors = [answer] if answer else []
        drained = _queue_drained(stack)
    else:
        value = _send(stack, case)
        errors = _errors(value)
        drained = True
    probe = f"h-probe-{case.name}"
    healthy = stack.app.send_task("predq.predict", kwargs={
        "features": GOOD[1], "request_id": probe}).get(timeout=60)
    after = _logged(stack.url)
    late = set(before) - stack.expected  # rows of earlier cases that appeared afterwards
    stack.expected = set(after)
    new = set(after) - set(before)
    marker_absent = not (stack.tmp / "PWNED-by-message").exists()
    shown = _shown(case, errors, value)
    fault_report(case.name, shown[:160] + ("…" if len(shown) > 160 else ""),
                 f"names {', '.join(case.mentions) or 'nothing: valid input'}; new rows "
                 f"{sorted(new - {probe}) or 'none'}; next good request "
                 f"{'OK' if 'prediction' in healthy else 'FAILED'}", group=GROUP)

    text = " ".join(errors).lower()
    for needle in case.mentions:
        assert needle.lower() in text, f"{case.name}: {needle!r} not in {errors!r:.600}"
    if not case.mentions:
        assert not errors, f"{case.name}: valid input refused: {errors}"
    if not case.raw and case.task == "predq.predict_batch" and "results" in value and not \
            value.get("error"):
        bad = [i for i, r in enumerate(value["results"]) if "error" in r]
        assert bad == list(case.item_errors), f"{case.name}: errors at {bad}"
    assert "prediction" in healthy and healthy["model_version"] == "v1", healthy
    assert drained and marker_absent
    assert stack.worker.proc is not None and stack.worker.proc.poll() is None
    assert new == set(case.logged) | {probe}, f"{case.name}: new rows {sorted(new)}"
    assert not late, f"rows that appeared after their case was checked: {sorted(late)}"
    for rid in case.logged:
        features = after[rid][1]
        sent = case.kwargs.get("features") or case.kwargs["rows"][
            case.kwargs["request_ids"].index(rid)]
        assert features == sent, f"{rid}: logged {features!r:.200} for {sent!r:.200}"


def test_one_nul_request_does_not_fail_its_micro_batch_neighbours(
        stack: Stack, fault_report: ReportFn) -> None:
    """Single-row requests share micro-batches: one bad item must not fail the others."""
    good = [stack.app.send_task("predq.predict", kwargs={
        "features": GOOD[i % 3], "request_id": f"h-nbr-{i}"}) for i in range(60)]
    poison = stack.app.send_task("predq.predict", kwargs={
        "features": {**GOOD[0], "brand": "Ford\u0000"}, "request_id": "h-nbr-poison"})
    good += [stack.app.send_task("predq.predict", kwargs={
        "features": GOOD[i % 3], "request_id": f"h-nbr-{i}"}) for i in range(60, 120)]
    answers = [_outcome(r) for r in good]
    failed = [a for a in answers if "prediction" not in a]
    poison_answer = _outcome(poison)
    logged = _logged(stack.url)
    stack.expected = set(logged)
    fault_report("One request with a NUL character among 120 concurrent good single-row "
                 "requests", f"the NUL request got: {str(poison_answer)[:120]}",
                 f"{len(failed)} of 120 good neighbours (sharing its micro-batches) failed; "
                 f"{sum(f'h-nbr-{i}' in logged for i in range(120))} of 120 logged")
    assert not failed, f"{len(failed)} good requests failed: {failed[:2]}"
    assert "features.brand" in str(poison_answer.get("error")), poison_answer
    assert all(f"h-nbr-{i}" in logged for i in range(120)) and "h-nbr-poison" not in logged


def _outcome(result: Any) -> dict[str, Any]:
    try:
        value = result.get(timeout=60)
    except Exception as exc:  # noqa: BLE001 - the measured outcome
        return {"raised": f"{type(exc).__name__}: {exc}"}
    return dict(value)
