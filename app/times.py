"""Time is integer epoch milliseconds everywhere in delayq; these are the only conversions."""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["MAX_DUE_MS", "ms_to_datetime", "now_ms", "to_ms"]

#: 9999-12-31T23:59:59.999Z: the latest due time delayq accepts.
MAX_DUE_MS = 253_402_300_799_999


def now_ms() -> int:
    """The wall clock as epoch milliseconds."""
    return time.time_ns() // 1_000_000


def to_ms(moment: datetime) -> int:
    """An aware datetime as epoch milliseconds."""
    if moment.tzinfo is None:
        raise ValueError("datetime must carry a time zone")
    return int(moment.timestamp() * 1000)


def ms_to_datetime(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
