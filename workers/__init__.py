"""predq workers: `celery -A workers worker` serves predictions (the threads pool, by the
app's own config; see celeryapp.pool_config)."""

from modelstore.settings import Settings
from workers.celeryapp import create_app

app = create_app(Settings.from_env())

__all__ = ["app", "create_app"]
