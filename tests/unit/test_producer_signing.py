"""Uploads through predq.store_model carry the pipeline's HMAC when it holds the key."""

from __future__ import annotations

import base64
from pathlib import Path

from modelstore import artifacts
from modelstore.settings import Settings
from producer.payloads import ArtifactPayload
from producer.transport import upload_signature


def test_signature_covers_the_exact_bytes_by_path_and_by_base64(tmp_path: Path) -> None:
    data = b"not really a model, but bytes all the same"
    path = tmp_path / "m.joblib"
    path.write_bytes(data)
    keyed = Settings.from_env({"PREDQ_SIGNING_KEY": "k1"})
    expected = artifacts.sign(artifacts.sha256_hex(data), b"k1")
    by_path = ArtifactPayload(str(path), None, None, len(data))
    by_b64 = ArtifactPayload(None, base64.b64encode(data).decode(), None, len(data))
    assert upload_signature(by_path, keyed) == expected
    assert upload_signature(by_b64, keyed) == expected
    assert upload_signature(by_b64, Settings.from_env({})) is None
    assert upload_signature(by_b64, Settings.from_env({"PREDQ_SIGNING_KEY": "k2"})) != expected
