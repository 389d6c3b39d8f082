"""predq's producer: the client applications, training pipelines and ops use.

Sends tasks by name over the wire contract; never imports the worker code.
"""

from producer.client import PredqClient
from producer.errors import (
    BrokerUnavailable,
    PredictionError,
    RequestRejected,
    ResultTimeout,
    TaskFailed,
)
from producer.serving import PromoteReport, ServingRow

__all__ = [
    "BrokerUnavailable",
    "PredictionError",
    "PredqClient",
    "PromoteReport",
    "RequestRejected",
    "ResultTimeout",
    "ServingRow",
    "TaskFailed",
]
