"""PREDQ_OWNER_TTL: parsed, validated, passed to the Redis transport, and the sweep interval
kept at or below half of it, so a dead consumer's tasks return within TTL + 10 s."""

from __future__ import annotations

import pytest

from modelstore import defaults
from modelstore.errors import ConfigError
from modelstore.settings import Settings


def test_default_owner_ttl_and_sweep_give_the_30_second_bound() -> None:
    options = Settings.from_env({})
    transport = options.celery_config()["broker_transport_options"]
    assert transport["owner_ttl"] == defaults.OWNER_TTL_S == 20
    assert transport["unacked_restore_interval"] == defaults.SWEEP_INTERVAL_S == 10
    assert transport["visibility_timeout"] == 3600


def test_owner_ttl_from_env_bounds_the_sweep_interval() -> None:
    transport = Settings.from_env({"PREDQ_OWNER_TTL": "6"}).celery_config()[
        "broker_transport_options"]
    assert transport["owner_ttl"] == 6
    assert transport["unacked_restore_interval"] == 3


@pytest.mark.parametrize("raw", ["0", "-5", "soon"])
def test_bad_owner_ttl_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="PREDQ_OWNER_TTL"):
        Settings.from_env({"PREDQ_OWNER_TTL": raw})


def test_owner_ttl_is_only_for_redis() -> None:
    transport = Settings.from_env({"PREDQ_BROKER_URL": "amqp://guest@localhost//",
                                   "PREDQ_RESULT_BACKEND": "redis://localhost:6379/1"}
                                  ).celery_config()["broker_transport_options"]
    assert "owner_ttl" not in transport
