"""Artifact formats, the skops allow-list, key rotation and the upload trust rule."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from modelstore import ModelLoader, artifacts, formats
from modelstore.errors import (
    ArtifactError,
    ArtifactFormatError,
    ArtifactSignatureError,
    ArtifactUntrustedType,
    ConfigError,
    InvalidInput,
)
from modelstore.settings import Settings
from producer import payloads
from producer.sample import FEATURES, make_cars
from tests.faults.stack import marker_pickle
from tests.support import models, uploads
from workers import uploads as worker_uploads
from workers.inference import predict_frame

SHA = "ab" * 32


def test_key_ring_first_signs_any_verifies() -> None:
    ring = artifacts.parse_keys(" k-new , k-old ")
    assert ring == (b"k-new", b"k-old")
    assert artifacts.parse_keys("only") == b"only" and artifacts.parse_keys(" , ") is None
    old = artifacts.sign(SHA, b"k-old")
    assert artifacts.sign(SHA, ring) == artifacts.sign(SHA, b"k-new")
    artifacts.verify_signature(SHA, old, ring, "m@v")  # rotation: old signature still valid
    with pytest.raises(ArtifactSignatureError, match="does not match"):
        artifacts.verify_signature(SHA, old, b"k-new", "m@v")  # once the old key is dropped
    assert Settings.from_env({"PREDQ_SIGNING_KEY": "a,b"}).signing_key == (b"a", b"b")


def test_openssl_one_liner_gives_the_same_signature(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"some artifact bytes")
    line = ("printf 'predq-artifact-v1:%s' \"$(sha256sum m.bin | cut -d' ' -f1)\" | "
            "openssl dgst -sha256 -hmac \"$KEY\" -r | cut -d' ' -f1")
    env = {"KEY": "k1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == artifacts.sign(artifacts.sha256_hex(path.read_bytes()), b"k1")


def test_settings_parse_the_safety_switches() -> None:
    s = Settings.from_env({"PREDQ_ALLOW_UNSIGNED_PICKLE": "1",
                           "PREDQ_SKOPS_TRUSTED": "a.B, c.D"})
    assert s.allow_unsigned_pickle and s.skops_trusted == ("a.B", "c.D")
    assert not Settings.from_env({}).allow_unsigned_pickle
    assert Settings.from_env({}).describe()["signing_key"] == "unset"


def test_format_names_and_bytes_are_checked() -> None:
    pickle_bytes = artifacts.serialize(models.small_model())
    skops_bytes = formats.dumps(models.small_model(), formats.FORMAT_SKOPS)
    assert formats.check_format(None) == "joblib"
    with pytest.raises(ArtifactFormatError, match="format: expected one of joblib, skops, onnx"):
        formats.check_format("pickle")
    assert formats.sniff(pickle_bytes) == "joblib" and formats.sniff(skops_bytes) == "skops"
    with pytest.raises(ArtifactFormatError, match="declared 'skops' but holds joblib bytes"):
        formats.check_bytes_match(pickle_bytes, "skops", "upload")
    with pytest.raises(ArtifactFormatError, match="declared 'joblib' but holds skops bytes"):
        formats.check_bytes_match(skops_bytes, "joblib", "upload")


def test_skops_round_trip_predicts_like_the_model() -> None:
    model = models.small_model()
    frame = make_cars(20, seed=4)[list(FEATURES)]
    loaded = formats.load_skops(formats.dumps(model, formats.FORMAT_SKOPS), "m")
    assert list(loaded.predict(frame)) == list(model.predict(frame))


def test_crafted_skops_is_refused_by_type_name_before_construction(tmp_path: Path) -> None:
    with pytest.raises(ArtifactUntrustedType, match=r"os\.system"):
        formats.load_skops(uploads.skops_calling("os", "system"), "evil")
    marker = tmp_path / "CONSTRUCTED"
    data = uploads.skops_constructing_marker(marker)
    with pytest.raises(ArtifactUntrustedType, match=uploads.CONSTRUCTION_MARKER_TYPE):
        formats.load_skops(data, "evil")
    assert not marker.exists()
    # Positive control: an operator who trusts the type gets it built (the payload is live).
    formats.load_skops(data, "evil", [uploads.CONSTRUCTION_MARKER_TYPE])
    assert marker.is_dir()


def test_onnx_converts_with_parity_and_serves_through_inference() -> None:
    pytest.importorskip("onnxruntime")
    from modelstore import onnxmodel

    model = models.small_model()
    sample = make_cars(200, seed=5)[list(FEATURES)]
    data = onnxmodel.convert(model, sample)
    assert onnxmodel.check_parity(model, data, sample) <= onnxmodel.PARITY_MAX_OFF_SHARE
    served = formats.loads(data, formats.FORMAT_ONNX, "m")
    preds, conf = predict_frame(served, sample.head(50))
    expected = model.predict(sample.head(50))
    close = np.abs(preds - expected) <= onnxmodel.PARITY_RTOL * np.abs(expected).max()
    assert conf is None and close.all()
    from_rows, no_conf = served.predict_rows(sample.head(50).to_dict(orient="records"))
    assert no_conf is None and list(from_rows) == list(preds)
    assert [c["name"] for c in artifacts.describe_features(served)["columns"]] == list(FEATURES)
    with pytest.raises(ArtifactFormatError, match="onnxruntime cannot open it"):
        formats.loads(b"\x08not an onnx graph", formats.FORMAT_ONNX, "junk")


def test_onnx_parity_failure_refuses_the_upload() -> None:
    pytest.importorskip("onnxruntime")
    from modelstore import onnxmodel

    sample = make_cars(100, seed=5)[list(FEATURES)]
    other = onnxmodel.convert(models.small_model(models.V2_OFFSET), sample)
    with pytest.raises(ArtifactError, match="ONNX and scikit-learn predictions differ"):
        onnxmodel.check_parity(models.small_model(), other, sample)


def test_onnx_classifier_on_an_array_input_keeps_column_order() -> None:
    pytest.importorskip("onnxruntime")
    from modelstore import onnxmodel

    clf = uploads.classifier()
    sample = pd.DataFrame({"a": np.linspace(-2, 2, 40), "b": np.linspace(-1, 2, 40)})
    served = formats.loads(onnxmodel.convert(clf, sample), formats.FORMAT_ONNX, "c")
    preds, conf = predict_frame(served, sample[["b", "a"]])  # reordered on purpose
    assert list(preds) == list(clf.predict(sample))
    assert conf == pytest.approx(clf.predict_proba(sample).max(axis=1), abs=1e-6)
    rows_preds, rows_conf = served.predict_rows(sample.to_dict(orient="records"))
    assert list(rows_preds) == list(preds) and list(rows_conf) == list(conf)


def _settings(**env: str) -> Settings:
    return Settings.from_env(env)


def test_upload_trust_rule() -> None:
    data = marker_pickle(Path("/nonexistent/never"))
    with pytest.raises(ArtifactSignatureError, match="refusing an unsigned joblib"):
        worker_uploads.check_upload_trust(_settings(), data, "joblib", None)
    with pytest.raises(ArtifactSignatureError, match="no PREDQ_SIGNING_KEY to verify"):
        worker_uploads.check_upload_trust(_settings(), data, "joblib", "00" * 32)
    keyed = _settings(PREDQ_SIGNING_KEY="new,old")
    with pytest.raises(ArtifactSignatureError, match="must carry its HMAC"):
        worker_uploads.check_upload_trust(keyed, data, "joblib", None)
    with pytest.raises(ArtifactSignatureError, match="does not match"):
        worker_uploads.check_upload_trust(keyed, data, "joblib", uploads.signed(data, b"x"))
    assert worker_uploads.check_upload_trust(keyed, data, "joblib", uploads.signed(data, b"old"))
    assert worker_uploads.check_upload_trust(_settings(), b"PK", "skops", None)
    # The opt-out stores the unsigned pickle but never loads it at upload time.
    assert not worker_uploads.check_upload_trust(
        _settings(PREDQ_ALLOW_UNSIGNED_PICKLE="1"), data, "joblib", None)


def test_opt_out_warns_at_start(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="workers.uploads"):
        worker_uploads.warn_if_unsafe(_settings())
        assert not caplog.records
        worker_uploads.warn_if_unsafe(_settings(PREDQ_ALLOW_UNSIGNED_PICKLE="yes"))
    assert "PREDQ_ALLOW_UNSIGNED_PICKLE=1" in caplog.text


def test_registration_refuses_what_cannot_serve(tmp_path: Path) -> None:
    path = tmp_path / "not-a-model.joblib"
    joblib.dump({"weights": [1, 2, 3]}, path)
    with pytest.raises(InvalidInput, match="a dict is not a model"):
        payloads.describe_file(path)
    with pytest.raises(InvalidInput, match="a list is not a model"):
        payloads.artifact_bytes([1, 2, 3])
    with pytest.raises(ArtifactError, match="not a model"):
        worker_uploads.check_servable(_settings(), artifacts.serialize({"a": 1}), "joblib", None)


def flipped_breaking_joblib(data: bytes) -> tuple[bytes, str]:
    """`data` with the first single-byte flip (in the pickle's opcodes) that makes a plain
    joblib.load raise IndexError or KeyError (issue 17.6: "pop from empty list")."""
    for pos in range(2, 400):
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        try:
            joblib.load(io.BytesIO(bytes(flipped)))
        except (IndexError, KeyError) as exc:
            return bytes(flipped), type(exc).__name__
        except Exception:  # noqa: BLE001 - other failures: try the next byte
            continue
    raise AssertionError("no single flipped byte broke the pickle that way")


def test_byte_flipped_joblib_is_one_clear_error(tmp_path: Path) -> None:
    flipped, raised = flipped_breaking_joblib(artifacts.serialize(models.small_model()))
    path = tmp_path / "flipped.joblib"
    path.write_bytes(flipped)
    with pytest.raises(InvalidInput, match=r"flipped\.joblib: not a loadable joblib file "
                       rf"\(corrupt or truncated\?\): {raised}"):
        payloads.describe_file(path)


def test_fallback_directory_accepts_skops(tmp_path: Path) -> None:
    (tmp_path / "production").mkdir()
    (tmp_path / "production" / "model.skops").write_bytes(
        formats.dumps(models.small_model(), formats.FORMAT_SKOPS))
    loader = ModelLoader("postgresql://nobody@127.0.0.1:1/none", tmp_path, signing_key=None,
                         connect_timeout_s=1)
    model = loader.load_production_model()
    assert loader.fallback_used and model is not None
    frame = make_cars(5, seed=2)[list(FEATURES)]
    assert list(model.predict(frame)) == list(models.small_model().predict(frame))


def test_joblib_bytes_stay_loadable_by_plain_joblib() -> None:
    data = artifacts.serialize(models.small_model())
    assert joblib.load(io.BytesIO(data)).predict is not None
    with pytest.raises(ConfigError):
        Settings.from_env({"PREDQ_VISIBILITY_TIMEOUT": "x"})


def test_cli_register_of_a_byte_flipped_file_prints_one_line(tmp_path: Path) -> None:
    flipped, _ = flipped_breaking_joblib(artifacts.serialize(models.small_model()))
    path = tmp_path / "flipped.joblib"
    path.write_bytes(flipped)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}"}
    done = subprocess.run([sys.executable, "-m", "producer.cli", "register", str(path),
                           "--model-type", "RF", "--run-id", "r1", "--direct"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert "not a loadable joblib file" in done.stderr + done.stdout
    assert len((done.stderr + done.stdout).strip().splitlines()) <= 2, done.stderr


def test_predq_sign_prints_the_first_keys_signature(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"artifact bytes for a client in another language")
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    signed = subprocess.run([sys.executable, "-m", "producer.cli", "sign", str(path)],
                            env={**base, "PREDQ_SIGNING_KEY": "k-new,k-old"},
                            capture_output=True, text=True, timeout=60)
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.strip() == artifacts.sign(artifacts.sha256_hex(path.read_bytes()),
                                                   b"k-new")
    keyless = subprocess.run([sys.executable, "-m", "producer.cli", "sign", str(path)],
                             env=base, capture_output=True, text=True, timeout=60)
    assert keyless.returncode == 2 and "PREDQ_SIGNING_KEY is not set" in keyless.stderr
