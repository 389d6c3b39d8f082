"""ModelLoader: database production row -> <model dir>/production/model.pkl ->
<model dir>/model.pkl -> None, with an in-memory cache keyed by (version, sha256).
Those files are model `default`'s; any model name also has
<model dir>/<name>/production/model.pkl (see _fallback_paths). Beside model.pkl, the
fallback also accepts model.skops and model.onnx (FALLBACK_FILES).

Every fallback is flagged (`fallback_used`, `source`, `fallback_reason`) and logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modelstore import artifacts, blobs, defaults, formats, promotion
from modelstore.blobs import ArtifactMeta
from modelstore.db import ModelEvaluationDB
from modelstore.engine import translate_errors
from modelstore.errors import ArtifactError, ModelNotFound, NoProductionModel, PredqError

log = logging.getLogger(__name__)

SOURCE_DATABASE = "database"
SOURCE_CACHE = "local-cache"
SOURCE_FILESYSTEM = "filesystem"
FALLBACK_FILES = ("model.pkl", "model.skops", "model.onnx")
"""File names the filesystem fallback accepts in a directory, in this order."""
_SUFFIX_FORMATS = {suffix: fmt for fmt, suffix in formats.FILE_SUFFIXES.items()}


@dataclass(frozen=True)
class LoadedModel:
    """A deserialized artifact and the identity of exactly these bytes."""

    artifact: Any
    model_name: str
    model_version: str
    sha256: str
    source: str
    generation: int | None = None
    feature_schema: dict[str, Any] | None = None
    model_type: str | None = None
    load_seconds: float = 0.0
    path: Path | None = None


class ModelLoader:
    """Loads verified artifacts; see the module docstring for the fallback order."""

    def __init__(self, database_url: str | None = None, model_dir: str | Path | None = None,
                 *, model_name: str = defaults.DEFAULT_MODEL_NAME,
                 signing_key: artifacts.Keys = None, cache_dir: str | Path | None = None,
                 connect_timeout_s: int = defaults.CONNECT_TIMEOUT_S,
                 memory_cache_size: int = defaults.MODEL_CACHE_SIZE,
                 skops_trusted: tuple[str, ...] | None = None) -> None:
        self.database_url = database_url
        self.model_dir = Path(model_dir or os.environ.get("PREDQ_MODEL_DIR")
                              or defaults.DEFAULT_MODEL_DIR)
        self.model_name = model_name
        if signing_key is None:
            signing_key = artifacts.parse_keys(os.environ.get("PREDQ_SIGNING_KEY"))
        self.signing_key = signing_key
        if skops_trusted is None:
            skops_trusted = tuple(t.strip() for t in os.environ.get(
                "PREDQ_SKOPS_TRUSTED", "").split(",") if t.strip())
        self.skops_trusted = skops_trusted
        cache = cache_dir or os.environ.get("PREDQ_ARTIFACT_CACHE_DIR") or (
            self.model_dir / ".cache")
        self.disk_cache = artifacts.ArtifactCache(Path(cache))
        self.connect_timeout_s = connect_timeout_s
        # Least recently used first; bounded, so promoting through many versions does not
        # keep every one alive (a served or in-flight model is held by its user anyway).
        self._memory: OrderedDict[tuple[str, str, str], LoadedModel] = OrderedDict()
        self.memory_cache_size = max(1, memory_cache_size)
        self._lock = threading.Lock()
        self._db: ModelEvaluationDB | None = None
        self.fallback_used = False
        self.fallback_reason: str | None = None
        self.source: str | None = None
        self.last_loaded: LoadedModel | None = None

    # -- seed API -------------------------------------------------------------------------

    def load_production_model(self) -> Any | None:
        """The production artifact, or a flagged filesystem fallback, or None (warned)."""
        loaded = self.load_production()
        return None if loaded is None else loaded.artifact

    def load_model_by_version(self, model_version: str) -> Any:
        """A specific version from the database; raises ModelNotFound if unknown."""
        return self.load_version(model_version).artifact

    def load_latest_model(self) -> Any | None:
        """The newest stored version of this model name, or None when there is none."""
        db = self._database()
        with translate_errors("loading latest model", model_name=self.model_name), \
                db.engine.connect() as conn:
            meta = blobs.latest_meta(conn, self.model_name)
        return None if meta is None else self._load_meta(meta, None).artifact

    def list_available_models(self, limit: int = 10) -> list[dict[str, Any]]:
        return self._database().list_models(limit=limit)

    def close(self) -> None:
        """Drop cached models; the engine is per process and stays."""
        with self._lock:
            self._memory.clear()
        self._db = None

    # -- predq API ------------------------------------------------------------------------

    def load_production(self) -> LoadedModel | None:
        try:
            loaded = self.load_production_from_db()
        except PredqError as exc:
            return self._fallback(f"{type(exc).__name__}: {exc}")
        self._mark(loaded, fallback=None)
        return loaded

    def load_production_from_db(self) -> LoadedModel:
        """The production version per the pointer (no filesystem fallback)."""
        db = self._database()
        with translate_errors("loading production model", model_name=self.model_name), \
                db.engine.connect() as conn:
            pointer = promotion.read_pointer(conn, self.model_name)
            if pointer is not None:
                meta = blobs.artifact_meta(conn, None, artifact_id=pointer.artifact_id)
                generation: int | None = pointer.generation
            else:  # a seed-style is_production flag set by raw SQL
                meta = _flagged_meta(conn, self.model_name)
                generation = None
        if meta is None:
            raise NoProductionModel(f"model {self.model_name!r} has no production version")
        return self._load_meta(meta, generation)

    def load_version(self, model_version: str) -> LoadedModel:
        db = self._database()
        with translate_errors("loading model", model_name=self.model_name,
                              model_version=model_version), db.engine.connect() as conn:
            meta = blobs.artifact_meta(conn, self.model_name, model_version)
        if meta is None:
            raise ModelNotFound(f"model {self.model_name!r} has no version {model_version!r}")
        return self._load_meta(meta, None)

    def load_meta(self, meta: ArtifactMeta, generation: int | None) -> LoadedModel:
        """Load a known artifact row (workers use this after reading the pointer)."""
        return self._load_meta(meta, generation)

    @property
    def cached_models(self) -> int:
        """Model versions held in this loader's memory cache."""
        return len(self._memory)

    def database(self) -> ModelEvaluationDB:
        """The store handle this loader reads through (created on first use)."""
        return self._database()

    def fallback(self, reason: str) -> LoadedModel | None:
        """The filesystem fallback, flagged with `reason` (for callers that read the
        pointer themselves and found the database path failing)."""
        return self._fallback(reason)

    # -- internals ------------------------------------------------------------------------

    def _database(self) -> ModelEvaluationDB:
        if self._db is None:
            self._db = ModelEvaluationDB(self.database_url, signing_key=self.signing_key,
                                         connect_timeout_s=self.connect_timeout_s)
        return self._db

    def _load_meta(self, meta: ArtifactMeta, generation: int | None) -> LoadedModel:
        label = f"{meta.model_name}@{meta.model_version}"
        if not meta.sha256:
            artifacts.verify(b"", None, None, None, label)  # raises: no recorded digest
        key = (meta.model_name, meta.model_version, str(meta.sha256))
        with self._lock:
            cached = self._memory.get(key)
            if cached is not None:
                self._memory.move_to_end(key)
        if cached is not None:
            # Same bytes, maybe reached another way (by version, then as production).
            return cached if cached.generation == generation else replace(
                cached, generation=generation)
        # Signature first: it needs only the recorded digest, so a refused artifact is
        # refused before its bytes are even fetched.
        artifacts.verify_signature(str(meta.sha256), meta.signature, self.signing_key, label)
        started = time.perf_counter()
        obj, source = self._fetch_and_load(meta, label)
        loaded = LoadedModel(obj, meta.model_name, meta.model_version, str(meta.sha256), source,
                             generation, meta.feature_schema or artifacts.describe_features(obj),
                             meta.model_type, time.perf_counter() - started)
        with self._lock:
            self._memory[key] = loaded
            while len(self._memory) > self.memory_cache_size:
                self._memory.popitem(last=False)
        log.info("loaded model %s (sha256 %s…) from %s in %.0f ms", label, loaded.sha256[:12],
                 source, loaded.load_seconds * 1000)
        return loaded

    def _fetch_and_load(self, meta: ArtifactMeta, label: str) -> tuple[Any, str]:
        sha = str(meta.sha256)
        fmt = meta.serialization_format or formats.FORMAT_JOBLIB
        data = self.disk_cache.get(sha)
        if data is not None:
            try:
                return artifacts.deserialize(data, sha, meta.signature, self.signing_key,
                                             label, fmt=fmt, skops_trusted=self.skops_trusted
                                             ), SOURCE_CACHE
            except artifacts.ArtifactIntegrityError:
                self.disk_cache.discard(sha)
        db = self._database()
        with translate_errors("fetching artifact", artifact=label), db.engine.connect() as conn:
            data, computed = blobs.fetch_verified(conn, meta.id)
        obj = artifacts.deserialize(data, sha, meta.signature, self.signing_key, label,
                                    computed_sha256=computed, fmt=fmt,
                                    skops_trusted=self.skops_trusted)
        self.disk_cache.put_in_background(sha, data)
        return obj, SOURCE_DATABASE

    def _fallback(self, reason: str) -> LoadedModel | None:
        paths = _fallback_paths(self.model_dir, self.model_name)
        for path in paths:
            if not path.is_file():
                continue
            try:
                loaded = self._load_file(path)
            except (OSError, ArtifactError) as exc:
                log.error("filesystem fallback %s refused: %s", path, exc)
                continue
            self._mark(loaded, fallback=reason)
            log.warning("FALLBACK: serving %s from %s (sha256 %s…) because the database "
                        "path failed: %s", self.model_name, path, loaded.sha256[:12], reason)
            return loaded
        self._mark(None, fallback=reason)
        log.warning("no model available for %r: database failed (%s) and no file at %s",
                    self.model_name, reason, ", ".join(map(str, paths)))
        return None

    def _load_file(self, path: Path) -> LoadedModel:
        """A file has no recorded digest; with a signing key it needs a `<file>.sig` sidecar."""
        data = path.read_bytes()
        sha = artifacts.sha256_hex(data)
        recorded = _read_sidecar(path, ".sha256") or sha
        signature = _read_sidecar(path, ".sig")
        started = time.perf_counter()
        fmt = _SUFFIX_FORMATS.get(path.suffix, formats.FORMAT_JOBLIB)
        obj = artifacts.deserialize(data, recorded, signature, self.signing_key, str(path),
                                    fmt=fmt, skops_trusted=self.skops_trusted)
        version = f"file:{sha[:12]}"
        return LoadedModel(obj, self.model_name, version, sha, SOURCE_FILESYSTEM, None,
                           artifacts.describe_features(obj), None,
                           time.perf_counter() - started, path)

    def _mark(self, loaded: LoadedModel | None, fallback: str | None) -> None:
        self.last_loaded = loaded
        self.fallback_used = fallback is not None
        self.fallback_reason = fallback
        self.source = None if loaded is None else loaded.source


def _fallback_paths(model_dir: Path, name: str) -> list[Path]:
    """The files that may stand in for model `name` when the database is down:
    `<dir>/<name>/production/model.pkl` (or .skops, .onnx); the seed's own paths mean
    model `default`."""
    folders = [model_dir / name / "production"]
    if name == defaults.DEFAULT_MODEL_NAME:
        folders += [model_dir / "production", model_dir]
    return [folder / file for folder in folders for file in FALLBACK_FILES]


def _read_sidecar(path: Path, suffix: str) -> str | None:
    side = path.with_name(path.name + suffix)
    try:
        return side.read_text().split()[0]
    except (OSError, IndexError):
        return None


def _flagged_meta(conn: Any, model_name: str) -> ArtifactMeta | None:
    from sqlalchemy import and_, select

    a = blobs.A
    artifact_id = conn.execute(select(a.c.id).where(and_(
        a.c.model_name == model_name, a.c.is_production.is_(True)))).scalar()
    return None if artifact_id is None else blobs.artifact_meta(conn, None,
                                                                artifact_id=artifact_id)


_default: ModelLoader | None = None
_default_lock = threading.Lock()


def _default_loader() -> ModelLoader:
    """The module functions' shared loader, created on first use (never at import)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ModelLoader()
        return _default


def load_production_model() -> Any | None:
    return _default_loader().load_production_model()


def load_model_by_version(model_version: str) -> Any:
    return _default_loader().load_model_by_version(model_version)


def list_models(limit: int = 10) -> list[dict[str, Any]]:
    return _default_loader().list_available_models(limit=limit)
