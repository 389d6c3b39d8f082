"""Artifact integrity primitives and the local content-addressed cache (no database)."""

from __future__ import annotations

import io
from pathlib import Path

import joblib
import pytest

from modelstore import artifacts
from modelstore.errors import ArtifactIntegrityError, ArtifactSignatureError
from modelstore.versions import new_version
from producer.sample import make_cars, train_pipeline, train_seed_dict

DATA = b"model bytes"
SHA = artifacts.sha256_hex(DATA)


def test_verify_and_deserialize_refuse_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(joblib, "load", lambda *_a, **_k: pytest.fail("joblib.load reached"))
    assert artifacts.verify(DATA, SHA, None, None, "m@v") == SHA
    with pytest.raises(ArtifactIntegrityError, match="m@v is corrupt"):
        artifacts.deserialize(DATA + b"!", SHA, None, None, "m@v")
    with pytest.raises(ArtifactIntegrityError, match="m@v has no recorded sha256"):
        artifacts.deserialize(DATA, None, None, None, "m@v")
    # A digest computed while streaming is compared all the same.
    with pytest.raises(ArtifactIntegrityError):
        artifacts.deserialize(DATA, SHA, None, None, "m@v", computed_sha256="0" * 64)


def test_signatures_bind_key_and_digest() -> None:
    signature = artifacts.sign(SHA, b"k")
    artifacts.verify_signature(SHA, signature, b"k", "m@v")
    artifacts.verify_signature(SHA, None, None, "m@v")  # no key: nothing to check
    with pytest.raises(ArtifactSignatureError, match="m@v is unsigned"):
        artifacts.verify_signature(SHA, None, b"k", "m@v")
    with pytest.raises(ArtifactSignatureError, match="does not match PREDQ_SIGNING_KEY"):
        artifacts.verify_signature(SHA, signature, b"other", "m@v")
    with pytest.raises(ArtifactSignatureError):
        artifacts.verify_signature("f" * 64, signature, b"k", "m@v")


def test_deserialize_roundtrip() -> None:
    data = artifacts.serialize({"a": [1, 2]})
    assert artifacts.deserialize(data, artifacts.sha256_hex(data), None, None, "x") == {
        "a": [1, 2]}


def test_cache_put_get_discard(tmp_path: Path) -> None:
    cache = artifacts.ArtifactCache(tmp_path / "cache")
    assert cache.get(SHA) is None
    cache.put_in_background(SHA, DATA)
    cache.wait()
    assert cache.get(SHA) == DATA
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{SHA}.joblib"]
    cache.discard(SHA)
    assert cache.get(SHA) is None


def test_cache_write_failure_is_only_a_warning(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    artifacts.ArtifactCache(blocker / "cache").put(SHA, DATA)
    assert "could not write artifact cache" in caplog.text


def test_feature_schema_of_a_pipeline_and_the_seed_dict() -> None:
    cars = make_cars(200, seed=3)
    for artifact in (train_pipeline(cars, n_estimators=2, max_depth=2),
                     train_seed_dict(cars, n_estimators=2, max_depth=2)):
        described = artifacts.describe_features(artifact)
        assert described is not None
        dtypes = {c["name"]: c["dtype"] for c in described["columns"]}
        assert dtypes == {"year": "number", "mileage": "number", "engine_size": "number",
                          "brand": "string", "condition": "string", "transmission": "string"}
    assert artifacts.describe_features(object()) is None


def test_versions_look_like_the_seed() -> None:
    from datetime import UTC, datetime

    assert new_version(datetime(2026, 1, 5, 14, 30, 22, tzinfo=UTC)) == "20260105_143022"
    assert len(new_version()) == 15


def test_serialize_is_what_the_seed_trainer_does() -> None:
    buffer = io.BytesIO()
    joblib.dump([1, 2, 3], buffer)
    assert artifacts.serialize([1, 2, 3]) == buffer.getvalue()
