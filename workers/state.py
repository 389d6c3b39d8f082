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
from modelstore.errors import (
    DatabaseUnavailable,
    InvalidInput,
    ModelNotFound,
    NoProductionModel,
    PredqError,
)
from modelstore.loader import ModelLoader
from modelstore.settings import Settings
from workers import board, metrics
from workers.batcher import Batcher
from workers.execute import ServingModel, execute, persist
from workers.maintenance import LogMaintainer
from workers.names import UnknownNames
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
        self.maintainer = LogMaintainer(settings, self._new_db)
        self.maintainer.start()
        self._slots: dict[str, ModelSlot] = {}
        self._batchers: dict[str, Batcher] = {}
        self._lock = threading.Lock()
        self._lookup_lock = threading.Lock()
        self.unknown = UnknownNames()
        self._lookup_unreachable_at = -1e9  # when a new name's lookup last met an outage
        self._batch_turns = threading.BoundedSemaphore(defaults.BATCH_TASKS_AT_ONCE)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._promoted_at: dict[str, float] = {}
        self.signal = GenerationSignal(signal_url(settings.broker_url, settings.result_backend))
        self._posted: dict[str, Any] | None = None
        self._refresher = threading.Thread(target=self._refresh_loop, name="predq-refresher",
                                           daemon=True)
        self._refresher.start()

    def _new_db(self) -> ModelEvaluationDB:
        return ModelEvaluationDB(self.settings.database_url, signing_key=self.settings.signing_key,
                                 connect_timeout_s=self.settings.connect_timeout_s)

    # -- models ---------------------------------------------------------------------------

    def slot(self, name: object) -> ModelSlot:
        """The slot of a model name; an unknown name raises and leaves nothing behind but a
        short-lived negative answer (no loader, no query per request for a typo)."""
        if not isinstance(name, str) or not name or len(name) > 100 or not set(name) <= _NAME_CHARS:
            raise InvalidInput(f"model: expected a model name ([A-Za-z0-9._-], at most 100 "
                               f"characters), got {name!r:.60}")
        existing = self._slots.get(name)
        if existing is not None:
            return existing
        with self._lookup_lock:  # one lookup per new name, not one per waiting thread
            existing = self._slots.get(name)
            if existing is not None:
                return existing
            known = self.unknown.get(name)
            if known is not None:
                raise InvalidInput(known)
            if len(self._slots) >= MAX_MODEL_NAMES:
                raise InvalidInput(f"model: this worker already serves {MAX_MODEL_NAMES} models")
            slot = ModelSlot(self._new_loader(name))
            try:
                self._first_load(slot)
            except PredqError as exc:
                if isinstance(exc, DatabaseUnavailable):
                    self._lookup_unreachable_at = time.monotonic()
                message = _lookup_error(name, exc)
                self.unknown.remember(name, message)
                raise InvalidInput(message) from exc
            with self._lock:
                return self._slots.setdefault(name, slot)

    def _new_loader(self, name: str) -> ModelLoader:
        s = self.settings
        return ModelLoader(s.database_url, s.model_dir, model_name=name,
                           signing_key=s.signing_key, skops_trusted=s.skops_trusted,
                           cache_dir=s.artifact_cache_dir,
                           connect_timeout_s=s.connect_timeout_s,
                           memory_cache_size=s.model_cache_size)

    def _first_load(self, slot: ModelSlot) -> None:
        """While the database is known to be down, a new name is looked up in the model
        directory only: a task thread never waits out a connect timeout for it."""
        if self.database_down():
            slot.load_fallback("the database is unreachable")
        else:
            slot.ensure_loaded()

    def database_down(self) -> bool:
        """True while the prediction log or a served model's pointer check finds the
        database unreachable (both re-probe it in the background), or a new name's lookup
        did moments ago."""
        recent = time.monotonic() - self._lookup_unreachable_at < self.unknown.ttl_s
        return recent or self.writer.down or any(
            s.db_unavailable for s in list(self._slots.values()))

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
                    version: object, timeout: float, request_time: object = None
                    ) -> dict[str, Any]:
        try:
            if version is not None:
                return self._predict_pinned(features, request_id, model, version, request_time)
            batcher = self.batcher(model)  # type: ignore[arg-type]
        except InvalidInput as exc:
            return {"request_id": request_id, "error": str(exc)}
        return batcher.predict(features, request_id, timeout, request_time)

    def _predict_pinned(self, features: object, request_id: str, model: object,
                        version: object, request_time: object) -> dict[str, Any]:
        serving = self._model_for(model, version)  # type: ignore[arg-type]
        started = time.perf_counter()
        outcome = execute(serving, [features], [request_id], self.limits, single_rows=True,
                          request_times=[request_time])
        persist(outcome, self.writer.write)
        metrics.observe_results(serving.loaded.model_name, serving.version, outcome.results,
                                time.perf_counter() - started)
        result = outcome.results[0]
        if "error" not in result:
            result.update(model_version=serving.version, model_sha256=serving.sha256)
        return result

    def predict_rows(self, rows: list[object], request_ids: list[str], model: object,
                     version: object, request_time: object = None,
                     shape_errors: dict[int, str] | None = None) -> dict[str, Any]:
        """`shape_errors`: rows already refused for their shape (a columnar data row of
        the wrong length), by position."""
        try:
            serving = self._model_for(model, version)  # type: ignore[arg-type]
        except InvalidInput as exc:
            return {"error": str(exc), "results": []}
        if version is None:
            self._maybe_poll(self.slot(model))
        with self._batch_turns:
            started = time.perf_counter()
            outcome = execute(serving, rows, request_ids, self.limits,
                              request_times=[request_time] * len(rows),
                              shape_errors=shape_errors)
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
        self.unknown.forget(model)  # a promote may have just made this name servable
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
            self._post_status()
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

    def _post_status(self) -> None:
        """Under prefork: tell the main process (which answers broadcasts) what this
        process serves, whenever that changed."""
        if board.board_dir() is None:
            return
        status = self.status()
        if status != self._posted:
            board.post(status)
            self._posted = status

    def status(self) -> dict[str, Any]:
        return {"pid": self.pid, "host": socket.gethostname(),
                "models": {n: s.status().as_dict() for n, s in self._slots.items()},
                "spooled_rows": self.writer.spool.pending_rows(),
                "dead_letter_rows": self.writer.dead_letters.rows,
                "dead_letter_file": str(self.writer.dead_letters.path),
                "replay_error": self.writer.replay_error}

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self.maintainer.close()
        self.writer.close()
        self._refresher.join(timeout=5)
        self.signal.close()
        dispose_engines()


def _lookup_error(name: str, exc: PredqError) -> str:
    """The error a request for an unservable name gets (and keeps getting for a while)."""
    if isinstance(exc, ModelNotFound) and str(exc) == f"unknown model {name!r}":
        return str(exc)
    if isinstance(exc, NoProductionModel):
        return f"model {name!r} has no production version"
    if isinstance(exc, DatabaseUnavailable):
        return f"model {name!r} is unavailable: {exc}"
    return f"model {name!r} cannot be served: {exc}"


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
