"""predq's model store: Postgres (or SQLite) registry, verified artifacts, cached loader.

Imports nothing else of predq's and nothing of Celery's. The public names are imported on
first access, so `import modelstore.errors` (or `python -m modelstore.schema`) does not
pull in SQLAlchemy engines, joblib and the loader.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelstore.db import ModelEvaluationDB
    from modelstore.errors import PredqError
    from modelstore.loader import (
        LoadedModel,
        ModelLoader,
        list_models,
        load_model_by_version,
        load_production_model,
    )
    from modelstore.settings import Settings
    from modelstore.stored import StoredModel

_EXPORTS = {
    "LoadedModel": "modelstore.loader",
    "ModelEvaluationDB": "modelstore.db",
    "ModelLoader": "modelstore.loader",
    "PredqError": "modelstore.errors",
    "Settings": "modelstore.settings",
    "StoredModel": "modelstore.stored",
    "list_models": "modelstore.loader",
    "load_model_by_version": "modelstore.loader",
    "load_production_model": "modelstore.loader",
}

__all__ = [
    "LoadedModel",
    "ModelEvaluationDB",
    "ModelLoader",
    "PredqError",
    "Settings",
    "StoredModel",
    "list_models",
    "load_model_by_version",
    "load_production_model",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'modelstore' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
