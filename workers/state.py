"""Per-process serving state: model slots, batchers, the prediction writer, the refresher.

Built on first use or at worker start (never at import, never before a fork: after a
fork the child sees a different pid and builds its own), closed on worker shutdown.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from modelstore import defaults
from modelstore.brokers import signal_url
from modelstore.db import ModelEvaluationDB
from modelstore.engine import dispose_engines
from modelstore.errors import InvalidInput, PredqError
from modelstore.loader import ModelLoader
from modelstore.settings import Settings
from workers import metrics
from workers.batcher import Batcher
from workers.execute import ServingModel, execute, persist
from workers.signal import GenerationSignal
from workers.slot import ModelSlot
from workers.spool import Spool
from workers.validation import Limits
from workers.writer import PredictionWriter

log = logging.getLogger(__name__)

MAX_MODEL_NAMES = 32
REFRESH_TICK_S = 0.25
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class ServingState:
    """What one serving process holds: a slot and a batcher per model name, one writer
    (database or spool), one refresher thread that keeps every slot converged."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.limits = Limits()
        self.writer = PredictionWriter(self._new_db, Spool(settings.spool_dir))
        self.writer.start()
        self._slots: dict[str, ModelSlot] = {}
        self._batchers: dict[str, Batcher] = {}
        self._lock = threading.Lock()
        self._batch_turns = threading.BoundedSemaphore(defaults.BATCH_TASKS_AT_ONCE)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._promoted_at: dict[str, float] = {}
        self.signal = GenerationSignal(signal_url(settings.broker_url, settings.result_backend))
        self._refresher = threading.Thread(target=self._refresh_loop, name="predq-refresher",
                                           daemon=True)
        self._refresher.start()

    def _new_db(self) -> ModelEvaluationDB:
        return ModelEvaluationDB(self.settings.database_url, signing_key=self.settings.signing_key,
                                 connect_timeout_s=self.settings.connect_timeout_s)

    # -- models ---------------------------------------------------------------------------

    def slot(self, name: object) -> ModelSlot:
        """The slot of a model name; an unknown name raises and leaves nothing behind."""
        if not isinstance(name, str) or not name or len(name) > 100 or not set(name) <= _NAME_CHARS:
            raise InvalidInput(f"model: expected a model name ([A-Za-z0-9._-], at most 100 "
                               f"characters), got {name!r:.60}")
        existing = self._slots.get(name)
        if existing is not None:
            return existing
        slot = ModelSlot(ModelLoader(self.settings.database_url, self.settings.model_dir,
                                     model_name=name, signing_key=self.settings.signing_key,
                                     cache_dir=self.settings.artifact_cache_dir,
                                     connect_timeout_s=self.settings.connect_timeout_s))
        try:
            slot.ensure_loaded()
        except PredqError as exc:
            raise InvalidInput(f"model: unknown or unavailable model {name!r}: {exc}") from exc
        with self._lock:
            if len(self._slots) >= MAX_MODEL_NAMES and name not in self._slots:
                raise InvalidInput(f"model: this worker already serves {MAX_MODEL_NAMES} models")
            return self._slots.setdefault(name, slot)

    def _model_for(self, name: str, version: object) -> ServingModel:
        slot = self.slot(name)
        if version is None:
            return slot.ensure_loaded()
        if not isinstance(version, str) or not version or len(version) > 50:
            raise InvalidInput(f"version: expected a version string, got {version!r:.60}")
        try:
            return slot.pinned(version)
        except PredqError as exc:
            raise InvalidInput(f"version: {exc}") from exc

    def batcher(self, name: str) -> Batcher:
        existing = self._batchers.get(name)
        if existing is not None:
            return existing
        slot = self.slot(name)
        with self._lock:
            if name not in self._batchers:
                self._batchers[name] = Batcher(
                    name, slot.ensure_loaded, self.writer, self.limits,
                    self.settings.max_batch_size, self.settings.batch_linger_ms / 1000,
                    before_batch=lambda: self._maybe_poll(slot))
            return self._batchers[name]

    # -- predictions ----------------------------------------------------------------------

    def predict_one(self, features: object, request_id: str, model: object,
                    version: object, timeout: float) -> dict[str, Any]:
        try:
            if version is not None:
                return self._predict_pinned(features, request_id, model, version)
            batcher = self.batcher(model)  # type: ignore[arg-type]
        except InvalidInput as exc:
            return {"request_id": request_id, "error": str(exc)}
        return batcher.predict(features, request_id, timeout)

    def _predict_pinned(self, features: object, request_id: str, model: object,
                        version: object) -> dict[str, Any]:
        serving = self._model_for(model, version)  # type: ignore[arg-type]
        started = time.perf_counter()
        outcome = execute(serving, [features], [request_id], self.limits, single_rows=True)
        persist(outcome, self.writer.write)
        metrics.observe_results(serving.loaded.model_name, serving.version, outcome.results,
                                time.perf_counter() - started)
        result = outcome.results[0]
        if "error" not in result:
            result.update(model_version=serving.version, model_sha256=serving.sha256)
        return result

    def predict_rows(self, rows: list[object], request_ids: list[str], model: object,
                     version: object) -> dict[str, Any]:
        try:
            serving = self._model_for(model, version)  # type: ignore[arg-type]
        except InvalidInput as exc:
            return {"error": str(exc), "results": []}
        if version is None:
            self._maybe_poll(self.slot(model))
        with self._batch_turns:
            started = time.perf_counter()
            outcome = execute(serving, rows, request_ids, self.limits)
            persist(outcome, self.writer.write)
        metrics.observe_results(serving.loaded.model_name, serving.version, outcome.results,
                                time.perf_counter() - started)
        return {"model_version": serving.version, "model_sha256": serving.sha256,
                "results": outcome.results}

    # -- convergence ----------------------------------------------------------------------

    def _due(self, slot: ModelSlot) -> bool:
        """True when the shared signal is ahead of what this process serves, or the last
        pointer check is older than the poll interval."""
        current = slot.current
        signalled = self.signal.peek(slot.name)
        if signalled is not None and current is not None and signalled > (
                current.generation or 0):
            return True
        return time.monotonic() - slot.last_check > self.settings.generation_poll_s

    def _maybe_poll(self, slot: ModelSlot) -> None:
        """Before a batch: wake the refresher when due. Never blocks on a load."""
        if self._due(slot):
            self._wake.set()

    def request_refresh(self, model: str | None = None, promoted_at: float | None = None) -> None:
        """Called by the promote broadcast: check now, load in the background."""
        for name in ([model] if model else list(self._slots)):
            self._promoted_at[name] = promoted_at or time.time()
        self._wake.set()

    def reload(self, model: str | None = None) -> None:
        for name, slot in list(self._slots.items()):
            if model is None or name == model:
                slot.reset()
        self.request_refresh(model)

    def _refresh_loop(self) -> None:
        # Short waits so an idle process also follows the signal; Postgres is read only
        # when woken, signalled, or every generation_poll_s.
        tick = min(self.settings.generation_poll_s, REFRESH_TICK_S)
        while not self._stop.is_set():
            woken = self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                return
            for name, slot in list(self._slots.items()):
                if not (woken or self._due(slot)):
                    continue
                try:
                    slot.refresh(promoted_at=self._promoted_at.pop(name, None))
                except Exception:
                    log.exception("refreshing model %r failed", name)

    def status(self) -> dict[str, Any]:
        return {"pid": self.pid, "host": socket.gethostname(),
                "models": {n: s.status().as_dict() for n, s in self._slots.items()},
                "spooled_rows": self.writer.spool.pending_rows()}

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self.writer.close()
        self._refresher.join(timeout=5)
        self.signal.close()
        dispose_engines()


_state: ServingState | None = None
_state_lock = threading.Lock()


def get_state(settings: Settings) -> ServingState:
    """This process's state, built on first use (a forked child builds its own)."""
    global _state
    with _state_lock:
        if _state is None or _state.pid != os.getpid():
            _state = ServingState(settings)
        return _state


def current_state() -> ServingState | None:
    state = _state
    return state if state is not None and state.pid == os.getpid() else None


def close_state() -> None:
    global _state
    with _state_lock:
        if _state is not None and _state.pid == os.getpid():
            _state.close()
        _state = None
