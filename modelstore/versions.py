"""Model version strings."""

from __future__ import annotations

from datetime import UTC, datetime

VERSION_FORMAT = "%Y%m%d_%H%M%S"


def new_version(now: datetime | None = None) -> str:
    """YYYYMMDD_HHMMSS in UTC; the store suffixes _2, _3… when a second is already taken."""
    return (now or datetime.now(UTC)).strftime(VERSION_FORMAT)
