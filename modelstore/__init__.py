"""predq's model store: Postgres (or SQLite) registry, verified artifacts, cached loader.

Imports nothing else of predq's and nothing of Celery's.
"""

from modelstore.db import ModelEvaluationDB, StoredModel
from modelstore.errors import PredqError
from modelstore.loader import (
    LoadedModel,
    ModelLoader,
    list_models,
    load_model_by_version,
    load_production_model,
)
from modelstore.settings import Settings

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
