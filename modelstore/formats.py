"""Artifact formats: joblib (pickle), skops (allow-listed types) and ONNX (onnxruntime).

Only joblib can run code while loading, so only joblib bytes need a trusted origin (the
database, the model directory, or an HMAC signature). skops bytes are audited against an
allow-list before anything is constructed; ONNX bytes are a graph onnxruntime interprets.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import joblib

from modelstore.errors import ArtifactError, ArtifactFormatError, ArtifactUntrustedType

FORMAT_JOBLIB = "joblib"
FORMAT_SKOPS = "skops"
FORMAT_ONNX = "onnx"
FORMATS = (FORMAT_JOBLIB, FORMAT_SKOPS, FORMAT_ONNX)
PICKLE_FORMATS = frozenset({FORMAT_JOBLIB})
"""Formats whose loading executes code from the bytes."""
FILE_SUFFIXES = {FORMAT_JOBLIB: ".pkl", FORMAT_SKOPS: ".skops", FORMAT_ONNX: ".onnx"}

SKOPS_SERVED_TYPES = (
    # skops trusts scikit-learn's estimators, numpy and scipy containers by default; these
    # are the inner types of the tree ensembles predq serves, which it does not.
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.Interval",
)
"""Types a skops upload may contain beyond skops' own defaults (PREDQ_SKOPS_TRUSTED adds)."""

_PICKLE_MAGIC = (b"\x80",)  # protocol 2+ PROTO opcode: what joblib.dump writes
_COMPRESSED_MAGIC = (b"\x78", b"\x1f\x8b", b"\xfd7zXZ", b"BZh", b"\x04\x22\x4d\x18")
_ZIP_MAGIC = b"PK\x03\x04"


def check_format(value: object) -> str:
    """The format named by a caller, or ArtifactFormatError naming the field."""
    if value is None:
        return FORMAT_JOBLIB
    if not isinstance(value, str) or value not in FORMATS:
        raise ArtifactFormatError(f"format: expected one of {', '.join(FORMATS)}, "
                                  f"got {value!r:.40}")
    return value


def sniff(data: bytes) -> str | None:
    """The format the bytes look like (by their first bytes), or None."""
    if data.startswith(_ZIP_MAGIC):
        return FORMAT_SKOPS
    if data.startswith(_PICKLE_MAGIC) or data.startswith(_COMPRESSED_MAGIC):
        return FORMAT_JOBLIB
    # An ONNX ModelProto starts with field 1 (ir_version, varint): tag byte 0x08.
    if data.startswith(b"\x08"):
        return FORMAT_ONNX
    return None


def check_bytes_match(data: bytes, fmt: str, label: str) -> None:
    """Refuse bytes that are not in the declared format (before any deserializing)."""
    found = sniff(data)
    if found != fmt:
        what = f"{found} bytes" if found else "bytes of no known format"
        raise ArtifactFormatError(f"format: {label} was declared {fmt!r} but holds {what}; "
                                  "pass the format the artifact was saved in")


def dumps(obj: object, fmt: str = FORMAT_JOBLIB) -> bytes:
    """Serialize a model object as joblib or skops (ONNX needs a conversion: onnx_convert)."""
    if fmt == FORMAT_SKOPS:
        import skops.io as sio

        return bytes(sio.dumps(obj))
    if fmt != FORMAT_JOBLIB:
        raise ArtifactFormatError(f"format: cannot dump an object as {fmt!r} directly")
    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    return buffer.getvalue()


def loads(data: bytes, fmt: str, label: str, skops_trusted: Iterable[str] = ()) -> Any:
    """Deserialize verified bytes. joblib only for trusted bytes (see the module docstring)."""
    if fmt == FORMAT_SKOPS:
        return load_skops(data, label, skops_trusted)
    if fmt == FORMAT_ONNX:
        from modelstore.onnxmodel import OnnxModel

        return OnnxModel.from_bytes(data, label)
    if fmt != FORMAT_JOBLIB:
        raise ArtifactFormatError(f"artifact {label}: unknown serialization format {fmt!r}")
    return joblib.load(io.BytesIO(data))


def untrusted_skops_types(data: bytes, label: str, extra: Iterable[str] = ()) -> list[str]:
    """Types the skops file names beyond skops' defaults, predq's list and `extra`.

    Reads only the file's schema: nothing is imported or constructed.
    """
    import skops.io as sio

    try:
        found = sio.get_untrusted_types(data=data)
    except Exception as exc:  # re-raised as ours: any parse failure means "not a skops file"
        raise ArtifactFormatError(f"artifact {label}: not a readable skops file: "
                                  f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    allowed = set(SKOPS_SERVED_TYPES) | set(extra)
    return [name for name in found if name not in allowed]


def load_skops(data: bytes, label: str, extra: Iterable[str] = ()) -> Any:
    """Audit, then construct. A type off the allow-list is refused by name, unbuilt."""
    import skops.io as sio

    extra = tuple(extra)
    refused = untrusted_skops_types(data, label, extra)
    if refused:
        raise ArtifactUntrustedType(
            f"artifact {label}: skops file references type(s) not on the allow-list: "
            f"{', '.join(refused[:10])}; refusing it (an operator who trusts them can list "
            "them in PREDQ_SKOPS_TRUSTED)")
    trusted = [*SKOPS_SERVED_TYPES, *extra]
    try:
        return sio.loads(data, trusted=trusted)
    except ArtifactError:
        raise
    except Exception as exc:  # re-raised as ours: a malformed file fails in many ways
        raise ArtifactFormatError(f"artifact {label}: skops file cannot be loaded: "
                                  f"{type(exc).__name__}: {str(exc)[:200]}") from exc


def has_predict(obj: object) -> bool:
    """Whether an artifact can serve: an estimator with predict, or the seed's dict."""
    if isinstance(obj, dict):
        return callable(getattr(obj.get("model"), "predict", None))
    return callable(getattr(obj, "predict", None))


def check_servable(obj: object, feature_schema: dict[str, Any] | None, label: str) -> None:
    """Refuse what loads but cannot serve: no predict, or columns other than the schema's."""
    if not has_predict(obj):
        raise ArtifactError(f"artifact {label}: a {type(obj).__name__} is not a model "
                            "(no predict method; expected an estimator, a Pipeline or the "
                            "seed's dict with a 'model'); refusing it")
    target = obj.get("preprocessor") or obj.get("model") if isinstance(obj, dict) else obj
    names = getattr(target, "feature_names_in_", None)
    columns = (feature_schema or {}).get("columns")
    if names is None or not isinstance(columns, list):
        return
    wanted = {str(c.get("name")) for c in columns if isinstance(c, dict)}
    have = {str(n) for n in names}
    if wanted and wanted != have:
        missing = sorted(have - wanted)[:5]
        extra = sorted(wanted - have)[:5]
        raise ArtifactError(f"artifact {label}: feature_schema does not match the model's "
                            f"inputs (model needs {missing or '-'}, schema adds {extra or '-'})")
