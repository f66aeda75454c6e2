"""Recurring rules (app/recurrence.py) with a fixed clock: cron in a time zone across both
daylight saving changes, month ends and leap days; intervals; until; missed occurrences."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from app.errors import InvalidRecord
from app.recurrence import MAX_SKIPPED_COUNTED, MIN_EVERY_MS, Rule, parse_rule

BERLIN = ZoneInfo("Europe/Berlin")


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz: object = UTC) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=tz).timestamp() * 1000)  # type: ignore[arg-type]


def utc(moment_ms: int) -> str:
    return datetime.fromtimestamp(moment_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def series(rule: Rule, start_ms: int, count: int) -> list[str]:
    """The ``count`` occurrences after ``start_ms``, in UTC."""
    found: list[str] = []
    moment: int | None = start_ms
    for _ in range(count):
        assert moment is not None
        moment = rule.after(moment)
        assert moment is not None
        found.append(utc(moment))
    return found


def cron(expr: str, zone: str = "UTC", until_ms: int | None = None) -> Rule:
    rule = parse_rule(expr, None, zone, until_ms)
    assert rule is not None
    return rule


def test_a_daily_berlin_time_at_the_spring_change_fires_at_the_first_minute_after_the_gap() -> None:
    # Given 02:30 every day in Berlin; on 2026-03-29 clocks go from 02:00 to 03:00 (CET -> CEST)
    rule = cron("30 2 * * *", "Europe/Berlin")
    # Then it fires at 02:30 CET (01:30 UTC), at 03:00 CEST on the change day (01:00 UTC), then at
    # 02:30 CEST (00:30 UTC)
    assert series(rule, ms(2026, 3, 27, 12), 3) == [
        "2026-03-28 01:30",
        "2026-03-29 01:00",
        "2026-03-30 00:30",
    ]


def test_a_daily_berlin_time_at_the_autumn_change_fires_once_at_its_first_instance() -> None:
    # Given 02:30 every day in Berlin; on 2026-10-25 02:00-03:00 happens twice (CEST, then CET)
    rule = cron("30 2 * * *", "Europe/Berlin")
    # Then it fires at 02:30 CEST only (00:30 UTC), not again at 02:30 CET (01:30 UTC)
    assert series(rule, ms(2026, 10, 23, 12), 3) == [
        "2026-10-24 00:30",
        "2026-10-25 00:30",
        "2026-10-26 01:30",
    ]


def test_an_hourly_rule_keeps_elapsed_hours_across_both_changes() -> None:
    rule = cron("@hourly", "Europe/Berlin")
    # Spring: 01:00 CET, then 03:00 CEST: one hour apart, no hour fired twice or lost
    assert series(rule, ms(2026, 3, 29, 0, 30, BERLIN), 3) == [
        "2026-03-29 00:00",
        "2026-03-29 01:00",
        "2026-03-29 02:00",
    ]
    # Autumn: 02:00 CEST and 02:00 CET both fire: they are an hour apart
    assert series(rule, ms(2026, 10, 25, 1, 30, BERLIN), 3) == [
        "2026-10-25 00:00",
        "2026-10-25 01:00",
        "2026-10-25 02:00",
    ]


def test_month_ends_and_leap_days() -> None:
    # The 31st: months without one are passed over
    assert series(cron("0 12 31 * *"), ms(2026, 1, 1), 3) == [
        "2026-01-31 12:00",
        "2026-03-31 12:00",
        "2026-05-31 12:00",
    ]
    # February 29th: the next leap years
    assert series(cron("0 0 29 2 *"), ms(2026, 1, 1), 2) == ["2028-02-29 00:00", "2032-02-29 00:00"]
    # Weekdays at 09:00 in Berlin, across a weekend
    assert series(cron("0 9 * * 1-5", "Europe/Berlin"), ms(2026, 1, 2, 12), 2) == [
        "2026-01-05 08:00",
        "2026-01-06 08:00",
    ]


@pytest.mark.parametrize(
    ("alias", "fields"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_named_rules_are_their_five_fields(alias: str, fields: str) -> None:
    assert series(cron(alias), ms(2026, 5, 5, 5, 5), 3) == series(
        cron(fields), ms(2026, 5, 5, 5, 5), 3
    )


def test_an_interval_counts_from_the_first_occurrence() -> None:
    rule = Rule(every_ms=30_000)
    assert rule.after(1_000) == 31_000
    # Missed: from 1,000 with the clock at 100,000, the latest due is 91,000; three skipped
    assert rule.latest(1_000, 100_000) == (91_000, 3)
    # Nothing missed: the stored occurrence itself
    assert rule.latest(1_000, 30_999) == (1_000, 0)


def test_missed_cron_occurrences_fire_once_at_the_latest_and_count_the_rest() -> None:
    # Given every 5 minutes, stored at 10:00 and the clock at 10:22
    rule = cron("*/5 * * * *")
    latest, skipped = rule.latest(ms(2026, 1, 1, 10), ms(2026, 1, 1, 10, 22))
    # Then 10:20 is sent; 10:00, 10:05, 10:10, 10:15 are skipped
    assert (utc(latest), skipped) == ("2026-01-01 10:20", 4)
    # And a due time exactly on an occurrence counts it as due
    assert utc(rule.latest(ms(2026, 1, 1, 10), ms(2026, 1, 1, 10, 5))[0]) == "2026-01-01 10:05"


def test_counting_missed_cron_occurrences_stops_at_a_bound() -> None:
    rule = cron("* * * * *")
    latest, skipped = rule.latest(ms(2026, 1, 1), ms(2026, 2, 1))
    assert utc(latest) == "2026-02-01 00:00"
    assert skipped == MAX_SKIPPED_COUNTED


def test_until_ends_the_series_and_bounds_the_missed_ones() -> None:
    rule = Rule(every_ms=10_000, until_ms=25_000)
    assert rule.after(10_000) == 20_000
    assert rule.after(20_000) is None
    assert rule.latest(0, 1_000_000) == (20_000, 2)
    daily = cron("0 9 * * *", until_ms=ms(2026, 1, 2, 9))
    assert daily.after(ms(2026, 1, 1, 9)) == ms(2026, 1, 2, 9)
    assert daily.after(ms(2026, 1, 2, 9)) is None


def test_rules_in_words() -> None:
    assert cron("0 9 * * 1-5", "Europe/Berlin").describe() == (
        "At 09:00 on Monday through Friday (Europe/Berlin)"
    )
    assert Rule(every_ms=90_000).describe() == "every 90 s"
    assert (
        Rule(every_ms=3_600_000, until_ms=0).describe() == "every 1 h, until 1970-01-01T00:00:00Z"
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (("61 * * * *", None, None, None), "is not a cron rule: Bad minute"),
        (("* * *", None, None, None), "needs five fields"),
        (("0 0 * * * *", None, None, None), "needs five fields"),
        (("@fortnightly", None, None, None), "the named rules are @yearly"),
        (("0 0 30 2 *", None, None, None), "Bad day-of-month"),
        (("0 9 * * *", None, "Mars/Olympus", None), "is not an IANA time zone"),
        (("0 9 * * *", None, "../etc/passwd", None), "is not an IANA time zone"),
        (("0 9 * * *", None, "Europe", None), "is not an IANA time zone"),
        (("0 9 * * *", None, "x" * 300, None), "is not an IANA time zone"),
        (("0 9 * * *", 60_000, None, None), "not both"),
        ((None, MIN_EVERY_MS - 1, None, None), f"below the minimum of {MIN_EVERY_MS} ms"),
        ((None, 60_000, "Europe/Berlin", None), "applies to a delayq-cron rule only"),
        ((None, None, "Europe/Berlin", None), "applies to a delayq-cron rule only"),
        ((None, None, None, 5), "needs delayq-cron or delayq-every-ms"),
    ],
)
def test_bad_rules_are_refused_with_the_field_at_fault(
    fields: tuple[str | None, int | None, str | None, int | None], reason: str
) -> None:
    with pytest.raises(InvalidRecord) as caught:
        parse_rule(*fields)
    assert reason in caught.value.reason
