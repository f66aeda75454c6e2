"""Key encoding (byte order = due order) and the job / fired-record codecs."""

from __future__ import annotations

import random
from dataclasses import replace

from app.jobs import Job, decode_fired, decode_job, encode_fired, encode_job, job_version
from app.times import MAX_DUE_MS
from tables.keys import decode_due_ms, due_key, due_prefix, encode_due_ms, id_key, split_due_key


def test_due_keys_sort_in_due_order_whatever_the_ids() -> None:
    # Given due times that sort differently as text (9 > 10 > 100 in text order)
    rng = random.Random(7)
    dues = [
        0,
        9,
        10,
        100,
        1_000,
        2**40,
        MAX_DUE_MS,
        *(rng.randrange(MAX_DUE_MS) for _ in range(200)),
    ]
    ids = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12))) for _ in dues]
    # When encoded as due keys
    keys = [due_key(d, i) for d, i in zip(dues, ids, strict=True)]
    # Then byte order is due order
    assert [split_due_key(k)[0] for k in sorted(keys)] == sorted(dues)


def test_due_prefix_bounds_exactly_the_keys_due_at_or_before() -> None:
    keys = [due_key(d, b"\xff" * 5) for d in (99, 100, 101)]
    assert [k for k in keys if k < due_prefix(101)] == keys[:2]
    assert due_prefix(100) <= due_key(100, b"")


def test_split_and_id_keys_round_trip() -> None:
    assert split_due_key(due_key(123, b"job-1")) == (123, b"job-1")
    assert decode_due_ms(encode_due_ms(MAX_DUE_MS)) == MAX_DUE_MS
    assert id_key(b"x") == b"Ix"


def test_job_round_trips_with_nulls_binary_and_headers() -> None:
    job = Job(
        job_id=b"\x00id\xff",
        due_ms=1_700_000_000_123,
        target="orders.close",
        key=None,
        value=None,
        headers=(("trace", b"\x00\x01"), ("empty", None), ("utf8-\u00e9", b"")),
        version=42,
    )
    raw = encode_job(job)
    assert decode_job(raw) == job
    assert job_version(raw) == 42
    big = Job(b"j", 1, "t", b"k", b"v" * 100_000, (), 0)
    assert decode_job(encode_job(big)) == big


def test_the_receipt_of_a_job_past_due_on_arrival_is_an_optional_trailer() -> None:
    # Given a job that arrived past due (its receipt kept) and the same job without it
    late = Job(b"j", 0, "t", None, b"v", (("h", b"1"),), 7, received_ms=1_700_000_000_000)
    plain = replace(late, received_ms=None)
    # Then the receipt round-trips, and lateness counts from it
    assert decode_job(encode_job(late)) == late
    assert (late.late_from_ms, plain.late_from_ms) == (1_700_000_000_000, 0)
    # and it is 8 bytes after the rest: a job without it is encoded as before
    assert encode_job(late)[:-8] == encode_job(plain)
    assert job_version(encode_job(late)) == 7


def test_forward_headers_carry_stable_dedup_pair_after_user_headers() -> None:
    job = Job(b"j1", 5, "t", b"k", b"v", (("a", b"1"),), 3)
    assert job.forward_key == b"k"
    assert job.forward_headers() == [("a", b"1"), ("delayq-job-id", b"j1"), ("delayq-due-ms", b"5")]
    assert Job(b"j1", 5, "t", None, b"v", (), 3).forward_key == b"j1"


def test_fired_records_round_trip() -> None:
    entries = [(due_key(5, b"a"), 1, 5), (due_key(6, b"\x00" * 300), 2**40, 6)]
    assert list(decode_fired(encode_fired(entries))) == entries
    assert list(decode_fired(b"")) == []


def test_a_fired_entry_carries_an_occurrence_other_than_its_key_in_eight_more_bytes() -> None:
    # A recurring job that missed occurrences forwards a later one than its key's due time
    own, later = (due_key(5, b"a"), 1, 5), (due_key(5, b"a"), 1, 9_000)
    assert list(decode_fired(encode_fired([later, own]))) == [later, own]
    assert len(encode_fired([later])) == len(encode_fired([own])) + 8


def test_time_helpers_are_exact_to_the_millisecond() -> None:
    from datetime import UTC, datetime

    from app.times import ms_to_datetime, to_ms

    moment = datetime(2031, 5, 17, 8, 0, 0, 123_000, tzinfo=UTC)
    assert to_ms(moment) == 1_936_771_200_123
    assert ms_to_datetime(MAX_DUE_MS) == datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    assert all(
        to_ms(ms_to_datetime(ms)) == ms for ms in range(1_700_000_000_000, 1_700_000_002_000)
    )
