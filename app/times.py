"""Time is integer epoch milliseconds everywhere in delayq; these are the only conversions."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

__all__ = ["MAX_DUE_MS", "ms_to_datetime", "now_ms", "to_ms"]

#: 9999-12-31T23:59:59.999Z: the latest due time delayq accepts.
MAX_DUE_MS = 253_402_300_799_999

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def now_ms() -> int:
    """The wall clock as epoch milliseconds."""
    return time.time_ns() // 1_000_000


def to_ms(moment: datetime) -> int:
    """An aware datetime as epoch milliseconds."""
    if moment.tzinfo is None:
        raise ValueError("datetime must carry a time zone")
    return (moment - _EPOCH) // _MS  # exact: float timestamps lose a millisecond


def ms_to_datetime(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return _EPOCH + ms * _MS
