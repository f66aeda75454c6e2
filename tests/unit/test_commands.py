"""Every rule of the wire contract an ingest record can break, and the commands it can carry."""

from __future__ import annotations

import pytest

from app.commands import Cancel, parse_command
from app.errors import InvalidRecord
from app.jobs import Job
from app.names import MAX_JOB_ID_BYTES
from app.recurrence import Rule

FORBIDDEN = frozenset({"delayq-ingest", "delayq-fired", "delayq-jobs-changelog"})
T = 1_700_000_000_000


def parse(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
) -> object:
    return parse_command(
        key, value, headers, timestamp_ms=T, version=7, forbidden_targets=FORBIDDEN
    )


def test_schedule_with_absolute_due_time_keeps_value_key_and_foreign_headers() -> None:
    command = parse(
        b"order-1",
        b"payload",
        [
            ("delayq-target", b"orders"),
            ("delayq-due-ms", b"1700000005000"),
            ("delayq-key", b"fwd-key"),
            ("trace", b"t1"),
            ("delayq-job-id", b"stale"),
        ],
    )
    assert command == Job(
        b"order-1", 1_700_000_005_000, "orders", b"fwd-key", b"payload", (("trace", b"t1"),), 7
    )


def test_schedule_with_delay_counts_from_record_timestamp() -> None:
    command = parse(b"j", b"v", [("delayq-target", b"t"), ("delayq-delay-ms", b"1500")])
    assert isinstance(command, Job)
    assert command.due_ms == T + 1500
    assert command.key is None


def test_null_value_with_target_is_a_tombstone_schedule() -> None:
    command = parse(b"j", None, [("delayq-target", b"t"), ("delayq-delay-ms", b"0")])
    assert isinstance(command, Job)
    assert command.value is None


def test_null_value_without_target_is_a_cancel() -> None:
    assert parse(b"j", None, [("trace", b"x")]) == Cancel(b"j")


@pytest.mark.parametrize(
    ("key", "value", "headers", "reason"),
    [
        (None, b"v", [("delayq-target", b"t"), ("delayq-delay-ms", b"1")], "key"),
        (b"", b"v", [("delayq-target", b"t"), ("delayq-delay-ms", b"1")], "key"),
        (
            b"x" * (MAX_JOB_ID_BYTES + 1),
            b"v",
            [("delayq-target", b"t"), ("delayq-delay-ms", b"1")],
            "longer than",
        ),
        (b"j", b"v", [("delayq-delay-ms", b"1")], "delayq-target is missing"),
        (b"j", b"v", [("delayq-target", b"t")], "exactly one"),
        (
            b"j",
            b"v",
            [("delayq-target", b"t"), ("delayq-delay-ms", b"1"), ("delayq-due-ms", b"1")],
            "exactly one",
        ),
        (b"j", b"v", [("delayq-target", b"t"), ("delayq-due-ms", b"soon")], "decimal"),
        (b"j", b"v", [("delayq-target", b"t"), ("delayq-due-ms", b"-5")], "decimal"),
        (b"j", b"v", [("delayq-target", b"t"), ("delayq-due-ms", b"1e9")], "decimal"),
        (b"j", b"v", [("delayq-target", b"t"), ("delayq-due-ms", None)], "decimal"),
        (b"j", b"v", [("delayq-target", b"t"), ("delayq-due-ms", "\u0663".encode())], "decimal"),
        (b"j", b"v", [("delayq-target", b"t"), ("delayq-due-ms", b"253402300800000")], "range"),
        (b"j", b"v", [("delayq-target", b"t"), ("delayq-delay-ms", b"253402300799999")], "9999"),
        (b"j", b"v", [("delayq-target", b"bad topic"), ("delayq-delay-ms", b"1")], "topic name"),
        (b"j", b"v", [("delayq-target", b"\xff"), ("delayq-delay-ms", b"1")], "UTF-8"),
        (b"j", b"v", [("delayq-target", b"delayq-ingest"), ("delayq-delay-ms", b"1")], "internal"),
        (
            b"j",
            b"v",
            [("delayq-target", b"a"), ("delayq-target", b"b"), ("delayq-delay-ms", b"1")],
            "more than once",
        ),
        (b"j", None, [("delayq-delay-ms", b"1")], "cancel"),
    ],
)
def test_bad_records_are_refused_with_a_reason(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]], reason: str
) -> None:
    with pytest.raises(InvalidRecord) as caught:
        parse(key, value, headers)
    assert reason in caught.value.reason


def test_a_recurring_schedule_starts_at_the_rules_first_occurrence_after_its_timestamp() -> None:
    # T is 2023-11-14 22:13:20 UTC: the first 09:00 Berlin (08:00 UTC) after it is the next day
    command = parse(
        b"daily",
        b"v",
        [
            ("delayq-target", b"t"),
            ("delayq-cron", b"0 9 * * *"),
            ("delayq-timezone", b"Europe/Berlin"),
        ],
    )
    assert isinstance(command, Job)
    assert command.due_ms == 1_700_035_200_000  # 2023-11-15 08:00 UTC
    assert command.rule == Rule(cron="0 9 * * *", timezone="Europe/Berlin")
    # An interval's first occurrence is the timestamp plus the interval
    every = parse(b"poll", b"v", [("delayq-target", b"t"), ("delayq-every-ms", b"30000")])
    assert isinstance(every, Job)
    assert (every.due_ms, every.rule) == (T + 30_000, Rule(every_ms=30_000))


def test_a_recurring_schedule_with_a_due_time_or_delay_starts_there() -> None:
    headers = [
        ("delayq-target", b"t"),
        ("delayq-every-ms", b"60000"),
        ("delayq-until-ms", b"%d" % (T + 10**6)),
    ]
    at = parse(b"j", b"v", [*headers, ("delayq-due-ms", b"%d" % (T + 5))])
    later = parse(b"j", b"v", [*headers, ("delayq-delay-ms", b"7")])
    assert isinstance(at, Job) and isinstance(later, Job)
    assert (at.due_ms, later.due_ms) == (T + 5, T + 7)
    assert at.rule == Rule(every_ms=60_000, until_ms=T + 10**6)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([("delayq-cron", b"61 * * * *")], "is not a cron rule"),
        ([("delayq-cron", b"0 9 * * *"), ("delayq-timezone", b"Nowhere/Land")], "IANA time zone"),
        ([("delayq-cron", b"0 9 * * *"), ("delayq-every-ms", b"60000")], "not both"),
        ([("delayq-every-ms", b"999")], "below the minimum"),
        ([("delayq-every-ms", b"1m")], "non-negative decimal integer"),
        ([("delayq-cron", b"")], "delayq-cron is empty"),
        ([("delayq-cron", b"\xff")], "delayq-cron is not UTF-8"),
        ([("delayq-every-ms", b"60000"), ("delayq-until-ms", b"%d" % T)], "before the first"),
        ([("delayq-cron", b"0 9 * * *"), ("delayq-until-ms", b"%d" % T)], "before the first"),
        ([("delayq-until-ms", b"%d" % (T + 1)), ("delayq-delay-ms", b"0")], "needs delayq-cron"),
    ],
)
def test_bad_recurring_schedules_are_refused_with_a_reason(
    headers: list[tuple[str, bytes | None]], reason: str
) -> None:
    with pytest.raises(InvalidRecord) as caught:
        parse(b"j", b"v", [("delayq-target", b"t"), *headers])
    assert reason in caught.value.reason
