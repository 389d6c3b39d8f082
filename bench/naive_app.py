"""The naive baseline predq is measured against: the seed guide built on Celery, one row per
task, with a persistent database connection (the better of the two naive variants).

    python -m celery -A bench.naive_app worker --pool prefork -c 2 -Q predq-naive

Each pool process loads the model once (joblib from the file in NAIVE_MODEL_PATH), then
every task predicts ONE row and INSERTs + COMMITs one row over the process's psycopg2
connection. Broker and result backend settings are predq's (`Settings.celery_config()`),
only the queue differs, so both systems can share a Redis database.
"""

from __future__ import annotations

import json
import os
from typing import Any

import joblib
import pandas as pd
import psycopg2
from celery import Celery
from celery.signals import worker_process_init
from sqlalchemy.engine import make_url

from modelstore.settings import Settings

QUEUE = "predq-naive"
TASK = "bench.naive_predict"
MODEL_PATH_ENV = "NAIVE_MODEL_PATH"
INSERT = """
INSERT INTO model_predictions (request_id, model_version, input_features, predicted_value)
VALUES (%s, %s, %s, %s)
"""

settings = Settings.from_env()
app = Celery("predq-naive")
app.conf.update(settings.celery_config())
app.conf.task_default_queue = QUEUE

_process: dict[str, Any] = {}


def libpq_dsn(url: str) -> str:
    """A SQLAlchemy URL (maybe `postgresql+psycopg2://`) as a plain libpq URI."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _loaded() -> tuple[Any, Any]:
    """This process's model and connection, made once (after the fork)."""
    if _process.get("pid") != os.getpid():
        _process.update(pid=os.getpid(), model=joblib.load(os.environ[MODEL_PATH_ENV]),
                        conn=psycopg2.connect(libpq_dsn(settings.database_url)))
    return _process["model"], _process["conn"]


@worker_process_init.connect
def _warm(**_: Any) -> None:
    _loaded()


@app.task(name=TASK)
def naive_predict(features: dict[str, Any], request_id: str, model_version: str
                  ) -> dict[str, Any]:
    model, conn = _loaded()
    value = float(model.predict(pd.DataFrame([features]))[0])
    with conn.cursor() as cur:
        cur.execute(INSERT, (request_id, model_version, json.dumps(features), value))
    conn.commit()
    return {"request_id": request_id, "model_version": model_version, "prediction": value}
