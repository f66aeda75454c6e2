"""Durations and moments as people write them, turned into delayq's integer milliseconds.

Used by the Python client, the CLI and the HTTP API, so every rejection is a ``ValueError``
(whatever the wrong input's type) with a message that can be shown to the person who typed it.

Durations (:func:`parse_duration_ms`): ``int``/``float`` milliseconds, a ``timedelta``, or a
string of one or more ``<number><unit>`` parts with the (lower-case) units ``ms``, ``s``, ``m``,
``h``, ``d``: ``"500ms"``, ``"90s"``, ``"1h30m"``, ``"1.5h"``, ``"2d"``. ``"0"`` is the only
string without a unit (``"30"`` is refused: seconds or milliseconds?). Negative durations are
refused; results are rounded to the nearest millisecond.

Moments (:func:`parse_time_ms`): epoch milliseconds (``int``, or a string of digits), an aware
``datetime``, or an ISO-8601 string with a zone (``2024-05-01T12:00:00Z``,
``2024-05-01T14:00:00+02:00``). Without a zone the moment is ambiguous and refused.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from app.times import MAX_DUE_MS, ms_to_datetime, to_ms

__all__ = [
    "Duration",
    "Moment",
    "format_duration_ms",
    "format_time_ms",
    "parse_duration_ms",
    "parse_time_ms",
]

#: What :func:`parse_duration_ms` accepts.
Duration = int | float | timedelta | str
#: What :func:`parse_time_ms` accepts.
Moment = int | datetime | str

_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_UNITS = "ms, s, m, h, d"
_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)")


def _duration_error(value: object, reason: str) -> ValueError:
    return ValueError(f"invalid duration {value!r}: {reason}")


def _checked_duration(value: object, ms: int | Decimal) -> int:
    if ms < 0:
        raise _duration_error(value, "must not be negative")
    if ms > MAX_DUE_MS:
        raise _duration_error(value, "too large (more than 8000 years)")
    return int(ms)


def _parse_duration_text(text: str) -> int:
    stripped = text.strip()
    if stripped.startswith("-"):
        raise _duration_error(text, "must not be negative")
    if stripped == "0":
        return 0
    if not stripped:
        raise _duration_error(text, f"empty; expected e.g. '90s', '1h30m' (units: {_UNITS})")
    total = Decimal(0)
    pos = 0
    while pos < len(stripped):
        match = _PART.match(stripped, pos)
        if match is None:
            raise _duration_error(text, f"expected e.g. '90s', '1h30m', '500ms' (units: {_UNITS})")
        number, unit = match.groups()
        if not unit:
            raise _duration_error(text, f"{number!r} needs a unit ({_UNITS}), e.g. '{number}s'")
        factor = _UNIT_MS.get(unit)
        if factor is None:
            raise _duration_error(text, f"unknown unit {unit!r} (use {_UNITS})")
        total += Decimal(number) * factor
        pos = match.end()
    return _checked_duration(text, total.to_integral_value(rounding=ROUND_HALF_UP))


def parse_duration_ms(value: Duration) -> int:
    """``value`` as a whole number of milliseconds (``int``/``float`` are milliseconds)."""
    if isinstance(value, bool):
        raise _duration_error(value, "expected milliseconds, a timedelta or a string like '90s'")
    if isinstance(value, int):
        return _checked_duration(value, value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _duration_error(value, "not a finite number")
        if value < 0:
            raise _duration_error(value, "must not be negative")
        return _checked_duration(value, Decimal(value).to_integral_value(ROUND_HALF_UP))
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise _duration_error(value, "must not be negative")
        micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        return _checked_duration(value, (micros + 500) // 1_000)
    if isinstance(value, str):
        return _parse_duration_text(value)
    raise _duration_error(
        value,
        f"expected milliseconds, a timedelta or a string like '90s', not {type(value).__name__}",
    )


def _time_error(value: object, reason: str) -> ValueError:
    return ValueError(f"invalid time {value!r}: {reason}")


def _checked_time(value: object, ms: int) -> int:
    if ms < 0:
        raise _time_error(value, "before 1970-01-01T00:00:00Z")
    if ms > MAX_DUE_MS:
        raise _time_error(value, "after 9999-12-31T23:59:59.999Z")
    return ms


def _datetime_ms(value: object, moment: datetime) -> int:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise _time_error(value, "needs a time zone (e.g. 'Z' or '+02:00')")
    try:
        return to_ms(moment)  # sub-millisecond parts are dropped
    except OverflowError:
        raise _time_error(value, "out of range") from None


def parse_time_ms(value: Moment) -> int:
    """``value`` as epoch milliseconds (``int`` and digit strings are epoch milliseconds)."""
    if isinstance(value, bool):
        raise _time_error(value, "expected epoch milliseconds, a datetime or an ISO-8601 string")
    if isinstance(value, int):
        return _checked_time(value, value)
    if isinstance(value, datetime):
        return _checked_time(value, _datetime_ms(value, value))
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and text.isascii():
            return _checked_time(value, int(text))
        if text.endswith("z"):  # fromisoformat() accepts only an upper-case Z
            text = text[:-1] + "Z"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise _time_error(
                value, "expected ISO-8601 like '2024-05-01T12:00:00Z' or epoch milliseconds"
            ) from None
        return _checked_time(value, _datetime_ms(value, moment))
    raise _time_error(
        value,
        "expected epoch milliseconds, a datetime or an ISO-8601 string, "
        f"not {type(value).__name__}",
    )


def format_duration_ms(ms: int) -> str:
    """``ms`` written the way :func:`parse_duration_ms` reads it: ``"1h30m"``, ``"1.5s"``."""
    if ms < 0:
        raise ValueError(f"invalid duration {ms!r}: must not be negative")
    if ms == 0:
        return "0s"
    parts: list[str] = []
    rest = ms
    for unit in ("d", "h", "m"):
        count, rest = divmod(rest, _UNIT_MS[unit])
        if count:
            parts.append(f"{count}{unit}")
    if rest:
        seconds, millis = divmod(rest, 1_000)
        if not millis:
            parts.append(f"{seconds}s")
        elif not seconds:
            parts.append(f"{millis}ms")
        else:
            parts.append(f"{seconds}.{millis:03d}".rstrip("0") + "s")
    return "".join(parts)


def format_time_ms(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds: ``2024-05-01T12:00:00.000Z``."""
    moment = ms_to_datetime(ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
