"""Artifacts for the upload-safety tests: crafted skops files, a classifier, signing."""

from __future__ import annotations

import io
import json
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.preprocessing import FunctionTransformer

from modelstore import artifacts, formats

CONSTRUCTION_MARKER_TYPE = "tests.support.uploads.ConstructionMarker"


class ConstructionMarker:
    """Building this object from its state creates the directory named in it: a skops
    loader that constructs it makes the construction visible."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        Path(state["path"]).mkdir()
        self.__dict__.update(state)


def _rewrite_schema(data: bytes, edit: Any) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as src:
        schema = json.loads(src.read("schema.json"))
        others = {n: src.read(n) for n in src.namelist() if n != "schema.json"}
    edit(schema)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        dst.writestr("schema.json", json.dumps(schema))
        for name, blob in others.items():
            dst.writestr(name, blob)
    return out.getvalue()


def skops_calling(module: str, function: str) -> bytes:
    """A skops FunctionTransformer whose func is `module.function` (e.g. os.system)."""
    data = formats.dumps(FunctionTransformer(func=np.log1p), formats.FORMAT_SKOPS)

    def edit(schema: dict[str, Any]) -> None:
        func = schema["content"]["content"]["func"]
        func["__class__"], func["__module__"] = function, module

    return _rewrite_schema(data, edit)


def skops_constructing_marker(marker: Path) -> bytes:
    """A skops file whose root object is a ConstructionMarker for `marker`."""
    data = formats.dumps(FunctionTransformer(), formats.FORMAT_SKOPS)

    def edit(schema: dict[str, Any]) -> None:
        module, _, name = CONSTRUCTION_MARKER_TYPE.rpartition(".")
        schema["__class__"], schema["__module__"] = name, module
        schema["content"]["content"] = {"path": {
            "__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(str(marker)), "is_json": True, "__id__": 1}}

    return _rewrite_schema(data, edit)


@lru_cache(maxsize=1)
def classifier() -> RandomForestClassifier:
    """A 3-class classifier on two numeric features 'a', 'b' (DataFrame-fitted)."""
    import pandas as pd

    rng = np.random.default_rng(3)
    x = pd.DataFrame({"a": rng.normal(size=600), "b": rng.normal(size=600)})
    y = (x["a"] > 0).astype(int) + (x["b"] > 0.5).astype(int)
    return RandomForestClassifier(n_estimators=15, max_depth=5, random_state=0).fit(x, y)


def signed(data: bytes, key: bytes) -> str:
    return artifacts.sign(artifacts.sha256_hex(data), key)
