"""Bad artifacts for test_artifacts: each is stored under its own version, by the store's
API and then tampered with by raw SQL where needed (a compromised database)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from modelstore import ModelEvaluationDB
from modelstore.artifacts import serialize, sign
from modelstore.errors import ArtifactIntegrityError, ArtifactSignatureError
from tests.faults.dbcheck import engine_for
from tests.faults.stack import marker_pickle
from tests.support import models

KEY = b"fault-suite-signing-key-7f3a91"
OTHER_KEY = b"not-the-workers-key-0c55e2"


def good_bytes(offset: float) -> bytes:
    return serialize(models.small_model(offset))


def store(url: str, version: str, data: bytes, key: bytes | None) -> None:
    """describe=False: the store must not unpickle these bytes in the test process either."""
    with ModelEvaluationDB(url, signing_key=key) as db:
        db.store_model(f"run-{version}", version, "RandomForest", data, rmse=1.0,
                       describe=False)


def sql(url: str, statement: str, **params: object) -> None:
    with engine_for(url) as engine, engine.begin() as conn:
        conn.execute(text(statement), params)


@dataclass(frozen=True)
class BadArtifact:
    name: str
    plant: Callable[[str, Path], str]  # (url, marker) -> version stored
    refusal: type[Exception]  # what set_production_model raises
    worker_says: str  # in the per-process error of predq_serving
    marker: bool = False


def _flipped_byte(url: str, marker: Path) -> str:
    store(url, "flipped", good_bytes(models.V2_OFFSET), KEY)
    sql(url, "UPDATE model_artifacts SET model_binary = set_byte(model_binary, 200, "
             "get_byte(model_binary, 200) # 1) WHERE model_version = 'flipped'")
    return "flipped"


def _wrong_sha(url: str, marker: Path) -> str:
    store(url, "wrongsha", good_bytes(models.V2_OFFSET), KEY)
    sql(url, "UPDATE model_artifacts SET sha256 = :sha WHERE model_version = 'wrongsha'",
        sha=hashlib.sha256(b"some other bytes").hexdigest())
    return "wrongsha"


def _unsigned(url: str, marker: Path) -> str:
    store(url, "unsigned", good_bytes(models.V2_OFFSET), None)
    return "unsigned"


def _mis_signed(url: str, marker: Path) -> str:
    store(url, "missigned", good_bytes(models.V2_OFFSET), OTHER_KEY)
    return "missigned"


def _marker_unsigned(url: str, marker: Path) -> str:
    store(url, "evil-unsigned", marker_pickle(marker), None)
    return "evil-unsigned"


def _marker_mis_signed(url: str, marker: Path) -> str:
    store(url, "evil-missigned", marker_pickle(marker), OTHER_KEY)
    return "evil-missigned"


def _marker_borrowed_digest(url: str, marker: Path) -> str:
    """Malicious bytes under the recorded digest of a genuine, correctly signed artifact:
    the signature checks out, only hashing the bytes themselves catches it."""
    store(url, "evil-digest", marker_pickle(marker), KEY)
    genuine = hashlib.sha256(serialize({"a genuine": "artifact"})).hexdigest()
    sql(url, "UPDATE model_artifacts SET sha256 = :sha, signature = :sig "
             "WHERE model_version = 'evil-digest'", sha=genuine, sig=sign(genuine, KEY))
    return "evil-digest"


CASES = [
    BadArtifact("flipped byte in model_binary", _flipped_byte, ArtifactIntegrityError,
                "corrupt"),
    BadArtifact("wrong sha256 recorded", _wrong_sha, ArtifactIntegrityError, "refusing"),
    BadArtifact("unsigned, PREDQ_SIGNING_KEY set", _unsigned, ArtifactSignatureError,
                "unsigned"),
    BadArtifact("signed with another key", _mis_signed, ArtifactSignatureError,
                "does not match"),
    BadArtifact("code-running pickle, valid sha256, unsigned", _marker_unsigned,
                ArtifactSignatureError, "unsigned", marker=True),
    BadArtifact("code-running pickle, valid sha256, signed with another key",
                _marker_mis_signed, ArtifactSignatureError, "does not match", marker=True),
    BadArtifact("code-running pickle under a genuine signed digest (corrupted digest)",
                _marker_borrowed_digest, ArtifactIntegrityError, "corrupt", marker=True),
]


def force_pointer(url: str, version: str) -> None:
    """Move production by raw SQL, bypassing every check (a tampered database)."""
    sql(url, """
        UPDATE production_pointer SET model_version = :v, generation = generation + 1,
               artifact_id = (SELECT id FROM model_artifacts
                              WHERE model_name = 'default' AND model_version = :v)
        WHERE model_name = 'default'""", v=version)
    sql(url, "UPDATE model_artifacts SET is_production = false "
             "WHERE model_name = 'default' AND is_production")
    sql(url, "UPDATE model_artifacts SET is_production = true "
             "WHERE model_name = 'default' AND model_version = :v", v=version)
