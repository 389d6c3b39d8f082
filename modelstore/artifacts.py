"""Artifact bytes: SHA-256 and HMAC integrity, and the local verified cache.

Unpickling is code execution, so nothing here deserializes bytes whose digest (and, with a
signing key, whose signature) has not been checked first. Formats live in formats.py.

Signing keys form a key ring (PREDQ_SIGNING_KEY, comma-separated): the first key signs,
any of them verifies, so a new key can be put in front while old signatures stay valid.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modelstore import formats
from modelstore.errors import ArtifactIntegrityError, ArtifactSignatureError

log = logging.getLogger(__name__)

FORMAT_JOBLIB = formats.FORMAT_JOBLIB
_SIGNATURE_CONTEXT = b"predq-artifact-v1:"
KEY_SEPARATOR = ","
"""Between the keys of PREDQ_SIGNING_KEY (keys themselves cannot contain a comma)."""

Keys = bytes | tuple[bytes, ...] | None
"""One signing key, or a ring of them (first signs, any verifies), or none."""


def parse_keys(raw: str | None) -> Keys:
    """PREDQ_SIGNING_KEY's value as a key ring: one key as bytes, several as a tuple."""
    keys = tuple(part.strip().encode() for part in (raw or "").split(KEY_SEPARATOR)
                 if part.strip())
    if not keys:
        return None
    return keys[0] if len(keys) == 1 else keys


def key_ring(keys: Keys) -> tuple[bytes, ...]:
    if keys is None:
        return ()
    return (keys,) if isinstance(keys, bytes) else tuple(keys)


def signing_key(keys: Keys) -> bytes | None:
    """The key that signs: the first of the ring."""
    ring = key_ring(keys)
    return ring[0] if ring else None


def serialize(artifact: object, fmt: str = formats.FORMAT_JOBLIB) -> bytes:
    """Dump an estimator, Pipeline or the seed's dict (joblib, as the seed's trainer does)."""
    return formats.dumps(artifact, fmt)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign(sha256: str, key: bytes | tuple[bytes, ...]) -> str:
    """HMAC-SHA256 over the artifact's digest: binds the key to exactly these bytes.

    `openssl` gives the same: printf 'predq-artifact-v1:%s' "$(sha256sum F | cut -d' ' -f1)"
    | openssl dgst -sha256 -hmac "$KEY" (see the README's Security section).
    """
    first = signing_key(key)
    if first is None:
        raise ArtifactSignatureError("signing needs a key (PREDQ_SIGNING_KEY)")
    return hmac.new(first, _SIGNATURE_CONTEXT + sha256.encode(), hashlib.sha256).hexdigest()


def signature_valid(sha256: str, signature: object, keys: Keys) -> bool:
    """Whether `signature` was made by any key of the ring."""
    if not isinstance(signature, str) or not signature:
        return False
    return any(hmac.compare_digest(sign(sha256, k), signature) for k in key_ring(keys))


def verify(data: bytes, sha256: str | None, signature: str | None, key: Keys,
           label: str) -> str:
    """Check digest and signature of `data`; returns the digest. Raises before any unpickling."""
    actual = sha256_hex(data)
    check_digest(actual, sha256, signature, key, label)
    return actual


def check_digest(actual: str, sha256: str | None, signature: str | None, key: Keys,
                 label: str) -> None:
    """Compare a digest computed from the bytes with the recorded one, then the signature."""
    if not sha256:
        raise ArtifactIntegrityError(
            f"artifact {label} has no recorded sha256; refusing to deserialize it "
            "(run `predq db upgrade` to record digests of legacy rows you trust)"
        )
    if not hmac.compare_digest(actual, sha256):
        raise ArtifactIntegrityError(
            f"artifact {label} is corrupt: sha256 {actual[:12]}… does not match the recorded "
            f"{sha256[:12]}…; refusing to deserialize it"
        )
    verify_signature(sha256, signature, key, label)


def verify_signature(sha256: str, signature: str | None, key: Keys, label: str) -> None:
    """With a key ring, the signature must come from one of its keys; without, no check."""
    if not key_ring(key):
        return
    if not signature:
        raise ArtifactSignatureError(
            f"artifact {label} is unsigned and PREDQ_SIGNING_KEY is set; refusing it"
        )
    if not signature_valid(sha256, signature, key):
        raise ArtifactSignatureError(
            f"artifact {label} has a signature that does not match PREDQ_SIGNING_KEY "
            "(any of its keys); refusing it"
        )


def deserialize(data: bytes, sha256: str | None, signature: str | None, key: Keys,
                label: str, *, computed_sha256: str | None = None,
                fmt: str = formats.FORMAT_JOBLIB, skops_trusted: Iterable[str] = ()) -> Any:
    """Verify, then load in `fmt`. The only path from bytes to a model object.

    `computed_sha256` spares hashing twice when the caller hashed exactly `data` while
    receiving it (blobs.fetch_verified); it is compared with the recorded digest all the same.
    """
    if computed_sha256 is None:
        verify(data, sha256, signature, key, label)
    else:
        check_digest(computed_sha256, sha256, signature, key, label)
    return formats.loads(data, fmt, label, skops_trusted)


def describe_features(artifact: object) -> dict[str, Any] | None:
    """The input columns (and coarse dtypes) an artifact expects, when it exposes them.

    Looks at `feature_names_in_` of the estimator, or of the seed dict's 'preprocessor'.
    A column consumed by an encoder of categories is a string; every other one a number.
    An ONNX model tells its input types itself.
    """
    own = getattr(artifact, "feature_schema", None)
    if callable(own):
        schema: dict[str, Any] | None = own()
        return schema
    target = artifact
    if isinstance(artifact, dict):
        target = artifact.get("preprocessor") or artifact.get("model")
    names = getattr(target, "feature_names_in_", None)
    if names is None:
        return None
    categorical = _categorical_columns(target)
    columns = [{"name": str(n), "dtype": "string" if str(n) in categorical else "number"}
               for n in names]
    return {"columns": columns, "source": "feature_names_in_"}


def _categorical_columns(obj: object) -> set[str]:
    found: set[str] = set()
    steps = getattr(obj, "steps", None)
    if steps:
        obj = steps[0][1]
    for _name, transformer, cols in getattr(obj, "transformers_", None) or []:
        if _encodes_categories(transformer) and isinstance(cols, list | tuple):
            found.update(str(c) for c in cols)
    return found


def _encodes_categories(transformer: object) -> bool:
    inner = transformer
    steps = getattr(transformer, "steps", None)
    if steps:
        inner = steps[-1][1]
    return type(inner).__name__ in {"OneHotEncoder", "OrdinalEncoder", "TargetEncoder"}


class ArtifactCache:
    """A local content-addressed cache: `<dir>/<sha256>.joblib`.

    It spares the database fetch on a cold start. Entries are returned unverified because
    `deserialize` verifies them anyway (hashing 32 MB twice would cost ~30 ms); a caller
    whose verification fails calls `discard` and falls back to the database.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._writers: list[threading.Thread] = []
        self._lock = threading.Lock()

    def path_for(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.joblib"

    def get(self, sha256: str) -> bytes | None:
        path = self.path_for(sha256)
        try:
            return path.read_bytes()
        except OSError:
            return None

    def discard(self, sha256: str) -> None:
        log.warning("artifact cache entry %s is corrupt; deleting it", self.path_for(sha256))
        self.path_for(sha256).unlink(missing_ok=True)

    def put(self, sha256: str, data: bytes) -> None:
        """Write atomically (temp file + rename); a failure only costs the next cold load."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, self.path_for(sha256))
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not write artifact cache %s: %s", self.directory, exc)

    def put_in_background(self, sha256: str, data: bytes) -> None:
        """`put` on a thread: writing 32 MB (~30 ms) stays off the load's critical path.

        Atomic rename means an interrupted write leaves at most a stray temp file.
        """
        writer = threading.Thread(target=self.put, args=(sha256, data),
                                  name=f"predq-cache-{sha256[:8]}", daemon=True)
        with self._lock:
            self._writers = [w for w in self._writers if w.is_alive()]
            self._writers.append(writer)
        writer.start()

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until background writes are done (tests, and a clean shutdown)."""
        with self._lock:
            writers = list(self._writers)
        for writer in writers:
            writer.join(timeout_s)
