"""Broker settings: RabbitMQ's queue, confirms and heartbeat; Sentinel; refused URLs."""

from __future__ import annotations

import pytest

from modelstore.errors import ConfigError
from modelstore.settings import Settings

AMQP = {"PREDQ_BROKER_URL": "amqp://guest:guest@rabbit:5672//",
        "PREDQ_RESULT_BACKEND": "redis://redis:6379/1"}


def test_amqp_gets_a_quorum_queue_with_a_delivery_limit_and_dead_lettering() -> None:
    config = Settings.from_env(AMQP).celery_config()
    queue = config["task_queues"]["predq"]
    assert queue["queue_arguments"] == {
        "x-queue-type": "quorum", "x-delivery-limit": 5,
        "x-dead-letter-exchange": "predq.dead", "x-dead-letter-routing-key": "predq.dead"}
    assert config["task_default_queue_type"] == "quorum"
    assert config["broker_transport_options"] == {"confirm_publish": True}
    assert config["broker_heartbeat"] == 8
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]


def test_amqp_settings_are_parsed_and_checked() -> None:
    config = Settings.from_env({**AMQP, "PREDQ_QUEUE_TYPE": "classic",
                                "PREDQ_CONFIRM_PUBLISH": "0", "PREDQ_AMQP_HEARTBEAT": "20",
                                "PREDQ_DELIVERY_LIMIT": "3"}).celery_config()
    assert config["task_queues"]["predq"]["queue_arguments"] == {}
    assert config["broker_transport_options"] == {"confirm_publish": False}
    assert config["broker_heartbeat"] == 20
    with pytest.raises(ConfigError, match="PREDQ_QUEUE_TYPE: expected quorum or classic"):
        Settings.from_env({**AMQP, "PREDQ_QUEUE_TYPE": "stream"})
    with pytest.raises(ConfigError, match="PREDQ_CONFIRM_PUBLISH: expected 1/0"):
        Settings.from_env({**AMQP, "PREDQ_CONFIRM_PUBLISH": "maybe"})
    with pytest.raises(ConfigError, match="PREDQ_DELIVERY_LIMIT: must be positive"):
        Settings.from_env({**AMQP, "PREDQ_DELIVERY_LIMIT": "0"})


def test_redis_keeps_its_own_options_and_no_amqp_ones() -> None:
    config = Settings.from_env({"PREDQ_BROKER_URL": "redis://r:6379/0"}).celery_config()
    assert "task_queues" not in config and "broker_heartbeat" not in config
    assert config["broker_transport_options"]["priority_steps"] == [0]


def test_amqp_needs_a_result_backend_that_is_not_amqp() -> None:
    with pytest.raises(ConfigError, match="PREDQ_RESULT_BACKEND: the broker is AMQP"):
        Settings.from_env({"PREDQ_BROKER_URL": "amqp://guest:guest@rabbit//"})
    with pytest.raises(ConfigError, match="AMQP is not a result backend"):
        Settings.from_env({"PREDQ_BROKER_URL": "amqp://rabbit//",
                           "PREDQ_RESULT_BACKEND": "amqp://rabbit//"})
    ok = Settings.from_env({"PREDQ_BROKER_URL": "amqp://rabbit//",
                            "PREDQ_RESULT_BACKEND": "db+postgresql://u:p@db/results"})
    # SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql://; predq ships psycopg2.
    assert ok.celery_config()["result_backend"] == "db+postgresql+psycopg2://u:p@db/results"


def test_redis_cluster_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="PREDQ_BROKER_URL: Redis Cluster is not supported"):
        Settings.from_env({"PREDQ_BROKER_URL": "redis+cluster://r:7000/0"})
    with pytest.raises(ConfigError, match="PREDQ_RESULT_BACKEND: Redis Cluster"):
        Settings.from_env({"PREDQ_RESULT_BACKEND": "rediss+cluster://r:7000/0"})


def test_sentinel_urls_need_and_get_the_master_name() -> None:
    url = "sentinel://s1:26379/0;sentinel://s2:26379/0"
    with pytest.raises(ConfigError, match="PREDQ_BROKER_URL: a sentinel:// URL needs "
                                          "PREDQ_SENTINEL_MASTER"):
        Settings.from_env({"PREDQ_BROKER_URL": url})
    config = Settings.from_env({"PREDQ_BROKER_URL": url, "PREDQ_SENTINEL_MASTER": "mymaster"}
                               ).celery_config()
    assert config["broker_url"] == url and config["result_backend"] == url
    assert config["broker_transport_options"]["master_name"] == "mymaster"
    assert config["result_backend_transport_options"]["master_name"] == "mymaster"
    assert "priority_steps" not in config["broker_transport_options"]
