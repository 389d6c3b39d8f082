"""The producer's errors: every one is a modelstore PredqError, so one `except` covers all."""

from __future__ import annotations

from modelstore.errors import PredqError


class BrokerUnavailable(PredqError):
    """Raised when the broker or the result backend cannot be reached."""


class RequestRejected(PredqError):
    """Raised when a worker answered a request with an error instead of a result."""


class PredictionError(RequestRejected):
    """Raised when a worker refused a prediction (bad input, unknown model or version)."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class ResultTimeout(PredqError):
    """Raised when no worker answered a task within the caller's timeout."""


class TaskFailed(PredqError):
    """Raised when a task raised on the worker instead of returning a result."""


class DeadLetterError(PredqError):
    """Raised when a parked message cannot be read back or requeued as it stands."""
