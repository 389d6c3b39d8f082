"""The batcher's hand-overs under forced interleavings: a role handed over as the
receiver's wait runs out, and waits that must end (issue 12, item 1)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from modelstore.artifacts import describe_features
from modelstore.errors import PredqError, ServingTimeout
from modelstore.loader import LoadedModel
from producer.sample import FEATURES, make_cars, train_pipeline
from workers import batcher as batcher_mod
from workers.batcher import Batcher
from workers.execute import ServingModel
from workers.validation import Limits

BOUND_S = 10.0  # generous: the machine is shared


class SpyLock:
    """A wake lock that reports when a timed wait on it ran out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.timed_out = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if not got and blocking and timeout > 0:
            self.timed_out.set()
        return got

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


class GatedWriter:
    """The first write blocks until `gate` is set; every write is recorded."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[str]] = []

    def write(self, rows: Sequence[dict[str, Any]]) -> str:
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(BOUND_S)
        self.batches.append([r["request_id"] for r in rows])
        return "written"


@pytest.fixture(scope="module")
def model() -> ServingModel:
    cars = make_cars(200, seed=7)
    artifact = train_pipeline(cars, n_estimators=3, max_depth=3)
    loaded = LoadedModel(artifact, "default", "v1", "ab" * 32, "database", 1,
                         describe_features(artifact))
    return ServingModel.wrap(loaded, 1)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    cars = make_cars(10, seed=8)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in cars[list(FEATURES)].to_dict(orient="records")]


def test_a_role_handed_over_as_the_wait_runs_out_is_taken_once(
        model: ServingModel, rows: list[dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """D writes (held at the gate); A predicts while B queues; A hands the predict stage
    to B, and the wake-up is delayed until B's own wait has run out. B must lead exactly
    one prediction, every request must get its own row, and the batcher must end idle."""
    leads: list[str] = []
    b_leads = threading.Event()
    b_queued = threading.Event()
    handed_over = threading.Event()
    spies: dict[str, SpyLock] = {}

    def spy_lock() -> Any:
        return SpyLock()

    @dataclass(eq=False)
    class PausedItem(batcher_mod._Item):
        wake: Any = field(default_factory=spy_lock)

        def wake_as(self, role: int) -> None:
            if self.request_id == "B" and role == batcher_mod._PREDICT:
                spies["B"] = self.wake
                assert self.wake.timed_out.wait(BOUND_S), "B's wait never ran out"
                b_leads.wait(1.0)  # old code: B leads meanwhile; fixed: B waits for the lock
                super().wake_as(role)
                handed_over.set()
                return
            super().wake_as(role)

    monkeypatch.setattr(batcher_mod, "_Item", PausedItem)

    def before() -> None:
        name = threading.current_thread().name
        leads.append(name)
        if name == "B":
            b_leads.set()
        if name == "A":  # predict A only once B is queued behind it
            assert b_queued.wait(BOUND_S)

    writer = GatedWriter()
    b = Batcher("default", lambda: model, writer, Limits(), 512, 0.0,  # type: ignore[arg-type]
                before_batch=before)
    results: dict[str, Any] = {}

    def run(name: str, row: int, timeout: float) -> None:
        try:
            results[name] = b.predict(rows[row], name, timeout)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            results[name] = exc

    threads = {n: threading.Thread(target=run, args=(n, i, t), name=n, daemon=True)
               for n, i, t in (("D", 0, 30), ("A", 1, 30), ("B", 2, 1.0))}
    threads["D"].start()
    assert writer.entered.wait(BOUND_S)
    threads["A"].start()
    deadline = time.monotonic() + BOUND_S
    while "A" not in leads and time.monotonic() < deadline:
        time.sleep(0.005)
    threads["B"].start()
    while len(b._pending) < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    b_queued.set()
    assert handed_over.wait(BOUND_S)
    assert b_leads.wait(BOUND_S)
    time.sleep(0.3)  # old code: B's stale wake-up makes it lead again here
    writer.gate.set()
    for t in threads.values():
        t.join(BOUND_S)
    assert not any(t.is_alive() for t in threads.values()), "a request hung"
    assert leads.count("B") == 1, f"B led prediction {leads.count('B')} times: {leads}"
    for name in ("D", "A", "B"):
        assert isinstance(results[name], dict), results[name]
        assert results[name]["request_id"] == name
    assert sorted(r for batch in writer.batches for r in batch) == ["A", "B", "D"]
    assert not b._predicting and not b._writing and b._in_flight == 0
    assert b.predict(rows[3], "later", BOUND_S)["request_id"] == "later"


def test_a_write_that_never_ends_times_out_with_a_predq_error_and_serving_goes_on(
        model: ServingModel, rows: list[dict[str, Any]]) -> None:
    writer = GatedWriter()
    b = Batcher("default", lambda: model, writer, Limits(), 512, 0.0,  # type: ignore[arg-type]
                durable_wait_s=0.3)
    results: dict[str, Any] = {}

    def first() -> None:
        try:
            results["w"] = b.predict(rows[0], "w", BOUND_S)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            results["w"] = exc

    leader = threading.Thread(target=first, daemon=True)
    leader.start()
    assert writer.entered.wait(BOUND_S)
    # Predicted while the write hangs: its thread waits in the pipeline, bounded.
    with pytest.raises(ServingTimeout, match="not durable"):
        b.predict(rows[1], "waits", BOUND_S)
    writer.gate.set()
    leader.join(BOUND_S)
    assert results["w"]["request_id"] == "w"
    # The abandoned batch was written by the leader, and the stage is free again.
    assert b.predict(rows[2], "after", BOUND_S)["request_id"] == "after"
    assert sorted(r for batch in writer.batches for r in batch) == ["after", "w", "waits"]
    assert not b._writing and b._in_flight == 0


def test_a_request_not_predicted_in_time_raises_a_predq_error() -> None:
    assert issubclass(ServingTimeout, PredqError)
    assert not issubclass(ServingTimeout, TimeoutError)


def test_an_answer_without_result_is_a_predq_error() -> None:
    item = batcher_mod._Item({}, "r")
    with pytest.raises(PredqError, match="without a result"):
        item.answer()


