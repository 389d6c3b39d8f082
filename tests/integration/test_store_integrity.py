"""Artifacts are verified before they are deserialized: tampered bytes, wrong digests,
unsigned or mis-signed rows never reach joblib.load, on SQLite and Postgres."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import joblib
import pytest
from sqlalchemy import Engine, text

from modelstore import ModelEvaluationDB, ModelLoader
from modelstore.errors import ArtifactIntegrityError, ArtifactSignatureError

KEY = b"predq-test-signing-key"


def _write_marker(path: str) -> None:
    Path(path).write_text("this ran while unpickling")


class Payload:
    """Unpickling this writes a file: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_write_marker, (self.marker,))


def _payload_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(Payload(marker), buffer)
    return buffer.getvalue()


def _flip_a_byte(engine: Engine, version: str) -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(
                "UPDATE model_artifacts SET model_binary = set_byte(model_binary, 100, "
                "get_byte(model_binary, 100) # 255) WHERE model_version = :v"), {"v": version})
            return
        blob = bytearray(conn.execute(text(
            "SELECT model_binary FROM model_artifacts WHERE model_version = :v"),
            {"v": version}).scalar_one())
        blob[100] ^= 0xFF
        conn.execute(text("UPDATE model_artifacts SET model_binary = :b WHERE model_version = :v"),
                     {"b": bytes(blob), "v": version})


def _set(engine: Engine, version: str, **values: object) -> None:
    assignments = ", ".join(f"{k} = :{k}" for k in values)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE model_artifacts SET {assignments} WHERE model_version = :v"),
                     {"v": version, **values})


def _forbid_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        pytest.fail("joblib.load was reached with bytes that should have been refused")

    monkeypatch.setattr(joblib, "load", refuse)


def test_a_flipped_byte_never_reaches_joblib(store_url: str, model_dir: Path,
                                             pipeline_bytes: bytes,
                                             raw_engine: Callable[[str], Engine],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with ModelEvaluationDB(store_url) as db:
        db.store_model("run-1", "v1", "RandomForest", pipeline_bytes, is_production=True)
    _flip_a_byte(raw_engine(store_url), "v1")
    _forbid_unpickling(monkeypatch)
    loader = ModelLoader(store_url)
    with pytest.raises(ArtifactIntegrityError, match="default@v1 is corrupt"):
        loader.load_version("v1")
    assert loader.load_production() is None  # refused, then no files to fall back to
    assert loader.fallback_used and "ArtifactIntegrityError" in str(loader.fallback_reason)


def test_a_wrong_or_missing_digest_is_refused(store_url: str, model_dir: Path,
                                              pipeline_bytes: bytes,
                                              raw_engine: Callable[[str], Engine],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with ModelEvaluationDB(store_url) as db:
        db.store_model("run-1", "v1", "RandomForest", pipeline_bytes)
        db.store_model("run-2", "v2", "RandomForest", pipeline_bytes + b"\0")
    _set(raw_engine(store_url), "v1", sha256="ab" * 32)
    _set(raw_engine(store_url), "v2", sha256=None)
    _forbid_unpickling(monkeypatch)
    loader = ModelLoader(store_url)
    with pytest.raises(ArtifactIntegrityError, match="does not match the recorded abababab"):
        loader.load_version("v1")
    with pytest.raises(ArtifactIntegrityError, match=r"no recorded sha256.*predq db upgrade"):
        loader.load_version("v2")


def test_signatures_are_enforced_with_a_key(store_url: str, model_dir: Path,
                                            pipeline_bytes: bytes,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with ModelEvaluationDB(store_url, signing_key=KEY) as db:
        db.store_model("run-1", "signed", "RandomForest", pipeline_bytes)
    with ModelEvaluationDB(store_url, signing_key=b"some other key") as db:
        db.store_model("run-2", "missigned", "RandomForest", pipeline_bytes)
    with ModelEvaluationDB(store_url) as db:
        db.store_model("run-3", "unsigned", "RandomForest", pipeline_bytes)

    monkeypatch.setenv("PREDQ_SIGNING_KEY", KEY.decode())  # the workers' way
    loader = ModelLoader(store_url)
    assert hasattr(loader.load_model_by_version("signed"), "predict")
    with pytest.raises(ArtifactSignatureError, match="default@unsigned is unsigned"):
        loader.load_version("unsigned")
    with pytest.raises(ArtifactSignatureError, match="default@missigned has a signature that"):
        loader.load_version("missigned")
    # Without a key every row with a good digest loads.
    monkeypatch.delenv("PREDQ_SIGNING_KEY")
    assert ModelLoader(store_url).load_version("unsigned").artifact is not None


def test_a_malicious_pickle_is_never_deserialized(store_url: str, model_dir: Path,
                                                  tmp_path: Path, pipeline_bytes: bytes,
                                                  raw_engine: Callable[[str], Engine]) -> None:
    marker = tmp_path / "marker"
    evil = _payload_bytes(marker)
    engine = raw_engine(store_url)
    with ModelEvaluationDB(store_url, signing_key=KEY) as db:
        db.store_model("run-1", "v1", "RandomForest", pipeline_bytes, is_production=True)
        db.store_model("run-2", "v2", "RandomForest", pipeline_bytes + b"\0")
        db.store_model("run-3", "v3", "RandomForest", pipeline_bytes + b"\0\0")

    # Bytes swapped, digest left alone: the digest check refuses (with or without a key).
    _set(engine, "v1", model_binary=evil)
    # Bytes and digest swapped together: only the signature can tell.
    from modelstore.artifacts import sha256_hex

    _set(engine, "v2", model_binary=evil, sha256=sha256_hex(evil))
    # Bytes and digest swapped, signature dropped: unsigned.
    _set(engine, "v3", model_binary=evil, sha256=sha256_hex(evil), signature=None)

    keyed = ModelLoader(store_url, signing_key=KEY)
    with pytest.raises(ArtifactIntegrityError):
        keyed.load_version("v1")
    with pytest.raises(ArtifactIntegrityError):
        ModelLoader(store_url).load_version("v1")
    with pytest.raises(ArtifactSignatureError):
        keyed.load_version("v2")
    with pytest.raises(ArtifactSignatureError):
        keyed.load_version("v3")
    assert keyed.load_production() is None and keyed.fallback_used
    assert not marker.exists()

    # Control: the payload does run when it verifies (no key, digest matching), so the
    # checks above are what kept the marker away.
    ModelLoader(store_url).load_version("v2")
    assert marker.exists()


def test_a_corrupt_cache_entry_falls_back_to_the_database_and_heals(
        store_url: str, model_dir: Path, tmp_path: Path, pipeline_bytes: bytes) -> None:
    with ModelEvaluationDB(store_url) as db:
        stored = db.store_model("run-1", "v1", "RandomForest", pipeline_bytes,
                                is_production=True)
    first = ModelLoader(store_url)
    assert first.load_production().source == "database"
    first.disk_cache.wait()
    entry = first.disk_cache.path_for(stored.sha256)
    assert entry.read_bytes() == pipeline_bytes
    assert ModelLoader(store_url).load_production().source == "local-cache"

    marker = tmp_path / "marker"
    for corrupt in (pipeline_bytes[:-1] + b"X", _payload_bytes(marker)):
        entry.write_bytes(corrupt)
        loader = ModelLoader(store_url)
        loaded = loader.load_production()
        assert loaded is not None and loaded.source == "database"
        loader.disk_cache.wait()
        assert entry.read_bytes() == pipeline_bytes  # healed
    assert not marker.exists()


def test_promoting_a_corrupt_or_unsigned_artifact_changes_nothing(
        store_url: str, model_dir: Path, pipeline_bytes: bytes,
        raw_engine: Callable[[str], Engine]) -> None:
    with ModelEvaluationDB(store_url, signing_key=KEY) as db:
        db.store_model("run-1", "v1", "RandomForest", pipeline_bytes, is_production=True)
        db.store_model("run-2", "v2", "RandomForest", pipeline_bytes + b"\0")
    with ModelEvaluationDB(store_url) as db:
        db.store_model("run-3", "v3", "RandomForest", pipeline_bytes + b"\0\0")
    _flip_a_byte(raw_engine(store_url), "v2")

    def state(db: ModelEvaluationDB) -> tuple[object, ...]:
        flags = {m["model_version"]: m["is_production"] for m in db.list_models()}
        return db.production_pointer(), len(db.promotion_history()), flags

    with ModelEvaluationDB(store_url, signing_key=KEY) as db:
        before = state(db)
        with pytest.raises(ArtifactIntegrityError, match="refusing to promote default@v2"):
            db.set_production_model("v2")
        with pytest.raises(ArtifactSignatureError, match="default@v3 is unsigned"):
            db.set_production_model("v3")
        assert state(db) == before
        assert before[0] is not None and before[0].model_version == "v1"
