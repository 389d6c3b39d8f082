"""predq's exception tree. Every error the store raises is a PredqError."""

from __future__ import annotations


class PredqError(Exception):
    """Raised for any predq failure; the root of the tree."""


class ConfigError(PredqError):
    """Raised when a setting is missing or malformed."""


class StoreError(PredqError):
    """Raised when the model store fails for a reason not covered below."""


class DatabaseUnavailable(StoreError):
    """Raised when the database cannot be reached within the connect timeout."""


class SchemaError(StoreError):
    """Raised when the database holds an older or foreign schema."""


class ModelNotFound(StoreError):
    """Raised when a model name or version is not in the store."""


class DuplicateModelVersion(StoreError):
    """Raised when a (model name, version) or (run_id, version) is already stored."""


class NoProductionModel(StoreError):
    """Raised when a model name has no production version."""


class RollbackError(StoreError):
    """Raised when there is no earlier production version to roll back to."""


class InvalidInput(PredqError):
    """Raised when a caller's value is malformed; the message names the field."""


class ServingTimeout(PredqError):
    """Raised when a request is not predicted, or not made durable, within its deadline."""


class ReplayBlocked(PredqError):
    """Raised when spool replay cannot go on until an operator acts (schema, full file)."""


class ArtifactError(PredqError):
    """Raised when an artifact is refused before or while deserializing."""


class ArtifactIntegrityError(ArtifactError):
    """Raised when an artifact's bytes do not match its recorded SHA-256."""


class ArtifactSignatureError(ArtifactError):
    """Raised when an artifact is unsigned or mis-signed while a signing key is set."""


class ArtifactFormatError(ArtifactError):
    """Raised when an artifact's format is unknown, or its bytes are not in that format."""


class ArtifactUntrustedType(ArtifactError):
    """Raised when a skops artifact references a type outside the allow-list."""
class PayloadRejected(InvalidInput):
    """Raised when a message body is refused before it is decoded (too deep, too large)."""

    def __init__(self, path: tuple[str | int, ...], problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{render_path(path)}: {problem}")


class EnvelopeRejected(InvalidInput):
    """Raised when the broker transport cannot build a message from what it fetched."""


def render_path(path: tuple[str | int, ...]) -> str:
    """`("rows", 3, "mileage")` -> `rows[3].mileage`; the empty path is the whole body."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "...":
            text += "…"
        else:
            text += f".{part}" if text else part
    return text or "message body"
