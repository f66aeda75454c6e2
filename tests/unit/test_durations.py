"""app.durations: what people write for "how long" and "when", as integer milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from app.durations import (
    format_duration_ms,
    format_time_ms,
    parse_duration_ms,
    parse_time_ms,
)
from app.times import MAX_DUE_MS

# 2024-05-01T12:00:00Z
NOON_MS = 1_714_564_800_000
CET = timezone(timedelta(hours=2))


@pytest.mark.parametrize(
    ("value", "expected_ms"),
    [
        (0, 0),
        (1500, 1500),
        (1.4, 1),
        (1.5, 2),
        (0.0, 0),
        (timedelta(0), 0),
        (timedelta(seconds=90), 90_000),
        (timedelta(minutes=1, microseconds=500), 60_001),  # rounded to the nearest ms
        (timedelta(days=2, hours=1), 176_400_000),
        ("0", 0),
        ("500ms", 500),
        ("90s", 90_000),
        ("30m", 1_800_000),
        ("1h", 3_600_000),
        ("1h30m", 5_400_000),
        ("1.5h", 5_400_000),
        ("2d", 172_800_000),
        ("1d2h3m4s5ms", 93_784_005),
        (" 1h 30m ", 5_400_000),
        (".5s", 500),
        ("1.1s", 1_100),  # exact: no float error
        ("1.0005s", 1_001),
        ("0s", 0),
        ("1m1m", 120_000),
    ],
)
def test_parse_duration(value: Any, expected_ms: int) -> None:
    # Given a duration as a number, a timedelta or a string / When parsed / Then exact ms
    assert parse_duration_ms(value) == expected_ms


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "must not be negative"),
        (-0.4, "must not be negative"),
        (timedelta(microseconds=-400), "must not be negative"),
        ("-5s", "must not be negative"),
        ("30", "'30' needs a unit"),
        ("1h30", "'30' needs a unit"),
        ("5x", "unknown unit 'x'"),
        ("1M", "unknown unit 'M'"),  # upper case: months? minutes? refused
        ("1H", "unknown unit 'H'"),
        ("5 us", "unknown unit 'us'"),
        ("", "empty"),
        ("   ", "empty"),
        ("h", "expected e.g."),
        ("1h-30m", "expected e.g."),
        ("1e3ms", "unknown unit 'e'"),
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (True, "expected milliseconds"),
        (None, "not NoneType"),
        ([1], "not list"),
        (MAX_DUE_MS + 1, "too large"),
        ("99999999999d", "too large"),
    ],
)
def test_parse_duration_refuses(value: Any, message: str) -> None:
    # Given something that is not a non-negative duration / When parsed / Then a clear ValueError
    with pytest.raises(ValueError, match=r"^invalid duration ") as raised:
        parse_duration_ms(value)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("value", "expected_ms"),
    [
        (0, 0),
        (NOON_MS, NOON_MS),
        (MAX_DUE_MS, MAX_DUE_MS),
        (str(NOON_MS), NOON_MS),
        (f" {NOON_MS} ", NOON_MS),
        (datetime(2024, 5, 1, 12, tzinfo=UTC), NOON_MS),
        (datetime(2024, 5, 1, 14, tzinfo=CET), NOON_MS),
        (datetime(2024, 5, 1, 12, 0, 0, 1_999, tzinfo=UTC), NOON_MS + 1),  # sub-ms dropped
        (datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC), MAX_DUE_MS),
        ("2024-05-01T12:00:00Z", NOON_MS),
        ("2024-05-01T12:00:00z", NOON_MS),
        ("2024-05-01T12:00:00.123Z", NOON_MS + 123),
        ("2024-05-01T14:00:00+02:00", NOON_MS),
        ("2024-05-01T12:00:00+00:00", NOON_MS),
        ("2024-05-01 12:00:00Z", NOON_MS),
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_parse_time(value: Any, expected_ms: int) -> None:
    # Given a moment as epoch ms, an aware datetime or ISO-8601 with a zone / Then exact epoch ms
    assert parse_time_ms(value) == expected_ms


def test_parse_time_is_exact_for_every_millisecond_of_a_second() -> None:
    # Given datetimes on every millisecond of one second (float timestamps lose some of them)
    base = datetime(2024, 5, 1, 12, tzinfo=UTC)
    moments = [base + timedelta(milliseconds=ms) for ms in range(1000)]
    # When parsed / Then each is exactly its millisecond
    assert [parse_time_ms(moment) - NOON_MS for moment in moments] == list(range(1000))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2024-05-01T12:00:00", "needs a time zone"),
        ("2024-05-01", "needs a time zone"),
        (datetime(2024, 5, 1, 12), "needs a time zone"),
        ("tomorrow", "expected ISO-8601"),
        ("", "expected ISO-8601"),
        ("12:00", "expected ISO-8601"),
        ("-5", "expected ISO-8601"),
        (-1, "before 1970"),
        ("1969-12-31T23:59:59Z", "before 1970"),
        (MAX_DUE_MS + 1, "after 9999"),
        (True, "expected epoch milliseconds"),
        (1.5e12, "not float"),
        (None, "not NoneType"),
        (timedelta(seconds=1), "not timedelta"),
    ],
)
def test_parse_time_refuses(value: Any, message: str) -> None:
    # Given something that is not an unambiguous moment / When parsed / Then a clear ValueError
    with pytest.raises(ValueError, match=r"^invalid time ") as raised:
        parse_time_ms(value)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (1, "1ms"),
        (999, "999ms"),
        (1_000, "1s"),
        (1_500, "1.5s"),
        (1_050, "1.05s"),
        (61_000, "1m1s"),
        (5_400_000, "1h30m"),
        (172_800_000, "2d"),
        (90_061_001, "1d1h1m1.001s"),
    ],
)
def test_format_duration_round_trips(ms: int, text: str) -> None:
    # Given milliseconds / When formatted / Then the text parses back to the same value
    assert format_duration_ms(ms) == text
    assert parse_duration_ms(text) == ms


def test_format_duration_refuses_negative() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        format_duration_ms(-1)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (NOON_MS + 7, "2024-05-01T12:00:00.007Z"),
        (MAX_DUE_MS, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_format_time_round_trips(ms: int, text: str) -> None:
    # Given epoch ms / When formatted / Then ISO-8601 UTC that parses back to the same value
    assert format_time_ms(ms) == text
    assert parse_time_ms(text) == ms
