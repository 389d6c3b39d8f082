"""predq workers: `celery -A workers worker --pool threads` serves predictions."""

from modelstore.settings import Settings
from workers.celeryapp import create_app

app = create_app(Settings.from_env())

__all__ = ["app", "create_app"]
