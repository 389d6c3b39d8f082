"""One model name as one serving process serves it: the current model object, and how it
converges to the production pointer.

Truth is the pointer's generation in the database (bumped in the promote transaction).
A process re-reads it at least every `generation_poll_s` and immediately when a promote
broadcast (or the shared signal) says it changed; new artifacts are loaded off the serving
path, and the swap is one reference assignment, so a batch always predicts with one
consistent model object.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelstore import blobs, formats, promotion
from modelstore.engine import translate_errors
from modelstore.errors import (
    DatabaseUnavailable,
    ModelNotFound,
    NoProductionModel,
    PredqError,
)
from modelstore.loader import ModelLoader
from workers import metrics
from workers.execute import ServingModel

log = logging.getLogger(__name__)

_PINNED_CACHE = 4


@dataclass
class SlotStatus:
    model_version: str | None
    sha256: str | None
    generation: int | None
    source: str | None
    loaded_at: str | None
    error: str | None
    switch_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ModelSlot:
    """The served model of one name in one process."""

    def __init__(self, loader: ModelLoader) -> None:
        self.loader = loader
        self.name = loader.model_name
        self._current: ServingModel | None = None
        self._pinned: dict[str, ServingModel] = {}
        self._lock = threading.Lock()
        self._error: str | None = None
        self._refused: tuple[int, str] | None = None
        self.db_unavailable = False  # the last pointer check could not reach the database
        self._failure: PredqError | None = None
        self.last_check = 0.0
        self.last_switch_s: float | None = None

    @property
    def current(self) -> ServingModel | None:
        return self._current

    def ensure_loaded(self) -> ServingModel:
        """The served model, loading production synchronously on first use."""
        model = self._current
        if model is not None:
            return model
        with self._lock:
            if self._current is None:
                self.refresh(force=True)
            if self._current is None:
                failure = self._failure or NoProductionModel(
                    f"model {self.name!r} is not available")
                raise type(failure)(str(failure))
            return self._current

    def refresh(self, force: bool = False, promoted_at: float | None = None) -> bool:
        """Check the pointer; load and swap when the generation moved. True if swapped."""
        self.last_check = time.monotonic()
        try:
            swapped = self._refresh(force, promoted_at)
        except PredqError as exc:
            self._error = str(exc)
            self._failure = exc
            self.db_unavailable = isinstance(exc, DatabaseUnavailable)
            if self._current is None:
                # Only an unreachable database falls back to a file: a name without a
                # production version is that, not a cue to serve some other model.
                return self.db_unavailable and self._try_fallback(str(exc))
            log.warning("model %r: keeping %s; refresh failed: %s", self.name,
                        self._current.version, exc)
            return False
        self.db_unavailable = False
        self._failure = None
        return swapped

    def _refresh(self, force: bool, promoted_at: float | None) -> bool:
        db = self.loader.database()
        with translate_errors("reading production pointer", model_name=self.name), \
                db.engine.connect() as conn:
            pointer = promotion.read_pointer(conn, self.name)
            if pointer is None and blobs.latest_meta(conn, self.name) is None:
                raise ModelNotFound(f"unknown model {self.name!r}")
            if pointer is None:
                raise NoProductionModel(f"model {self.name!r} has no production version")
            current = self._current
            if not force and current is not None and current.generation == pointer.generation:
                return False
            meta = blobs.artifact_meta(conn, None, artifact_id=pointer.artifact_id)
        if meta is None or meta.sha256 is None:
            raise ModelNotFound(f"model {self.name!r}: production artifact id "
                                f"{pointer.artifact_id} is missing or has no sha256")
        key = (pointer.generation, meta.sha256)
        if self._refused == key and not force:
            return False
        try:
            loaded = self.loader.load_meta(meta, pointer.generation)
            # Loads but cannot serve (e.g. a dict of weights): refused once, with a reason,
            # rather than a traceback at every poll.
            formats.check_servable(loaded.artifact, None,
                                   f"{self.name}@{meta.model_version}")
        except PredqError:
            if self._refused != key:
                metrics.observe_refused(self.name)
            self._refused = key
            raise
        self._swap(ServingModel.wrap(loaded, pointer.generation), promoted_at)
        return True

    def _swap(self, model: ServingModel, promoted_at: float | None) -> None:
        previous = self._current
        self._current = model
        self._error = None
        self._refused = None
        if promoted_at is not None:
            self.last_switch_s = max(0.0, time.time() - promoted_at)
        switched = previous is not None and previous.generation != model.generation
        lag = metrics.promote_lag(self.loader._database().engine, self.name, model.generation,
                                  promoted_at) if switched else None
        metrics.observe_switch(self.name, model.generation, lag, model.loaded.load_seconds,
                               model.version)
        metrics.set_cached_models(self.name, self.loader.cached_models)
        if previous is None or previous.version != model.version:
            log.info("model %r now serving %s (generation %s, sha256 %s…, from %s)", self.name,
                     model.version, model.generation, model.sha256[:12], model.loaded.source)

    def load_fallback(self, reason: str) -> ServingModel:
        """Serve the name's fallback file without touching the database (known down)."""
        with self._lock:
            if self._current is None:
                self._try_fallback(reason)
            model = self._current
        if model is None:
            raise DatabaseUnavailable(f"{reason}, and there is no fallback file for it")
        self.db_unavailable = True
        self._error = reason
        return model

    def _try_fallback(self, reason: str) -> bool:
        loaded = self.loader.fallback(reason)
        if loaded is None:
            return False
        # Flagged: status() reports source=filesystem and the reason.
        self._current = ServingModel.wrap(loaded, None)
        return True

    def pinned(self, version: str) -> ServingModel:
        """A specific stored version (the `version` argument of the predict tasks)."""
        model = self._pinned.get(version)
        if model is None:
            model = ServingModel.wrap(self.loader.load_version(version), None)
            with self._lock:
                if len(self._pinned) >= _PINNED_CACHE:
                    self._pinned.pop(next(iter(self._pinned)))
                self._pinned[version] = model
        return model

    def reset(self) -> None:
        """Forget cached models (predq_reload); the next refresh loads production again."""
        self.loader.close()
        with self._lock:
            self._pinned.clear()
            self._refused = None

    def status(self) -> SlotStatus:
        model = self._current
        if model is None:
            return SlotStatus(None, None, None, None, None, self._error)
        loaded_at = datetime.fromtimestamp(model.loaded_at.timestamp(), UTC).isoformat()
        return SlotStatus(model.version, model.sha256, model.generation, model.loaded.source,
                          loaded_at, self._error or self.loader.fallback_reason,
                          self.last_switch_s)
