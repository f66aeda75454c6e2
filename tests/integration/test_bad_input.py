"""Every kind of bad ingest record reaches the dead-letter topic with its reason."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.times import now_ms
from tests.conftest import WorkerFactory
from tests.support import WAIT_S, Kafka, Namespace, headers_of, schedule_headers

pytestmark = pytest.mark.integration


async def test_each_bad_record_is_dead_lettered_with_key_value_headers_and_reason(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    start_worker()
    target = ns.target()
    bad: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], str]] = [
        (None, b"no key", schedule_headers(target, delay_ms=0), "job id) is missing"),
        (b"no-target", b"v", [("delayq-delay-ms", b"0")], "delayq-target is missing"),
        (
            b"bad-time",
            b"v",
            [*schedule_headers(target), ("delayq-due-ms", b"tomorrow")],
            "non-negative decimal",
        ),
        (b"both-times", b"v", schedule_headers(target, due_ms=1, delay_ms=1), "exactly one"),
        (b"no-time", b"v", schedule_headers(target), "exactly one"),
        (b"bad-topic", b"v", schedule_headers("no spaces/allowed", delay_ms=0), "topic name"),
        (b"loop", b"v", schedule_headers(ns.ingest, delay_ms=0), "internal delayq topic"),
        (b"y10k", b"v", schedule_headers(target, due_ms=253_402_300_800_000), "out of range"),
        # Recurring jobs (app/recurrence.py)
        (b"bad-cron", b"v", schedule_headers(target, delayq_cron=b"61 * * * *"), "not a cron"),
        (
            b"bad-zone",
            b"v",
            schedule_headers(target, delayq_cron=b"@daily", delayq_timezone=b"Mars/Base"),
            "not an IANA time zone",
        ),
        (
            b"cron-and-every",
            b"v",
            schedule_headers(target, delayq_cron=b"@daily", delayq_every_ms=b"60000"),
            "not both",
        ),
        (b"too-often", b"v", schedule_headers(target, delayq_every_ms=b"10"), "below the minimum"),
        (
            b"ends-first",
            b"v",
            schedule_headers(
                target, due_ms=now_ms() + 60_000, delayq_every_ms=b"1000", delayq_until_ms=b"5"
            ),
            "before the first occurrence",
        ),
    ]
    # When they are produced between two good jobs
    await kafka.send(ns.ingest, b"good-1", b"g", schedule_headers(target, delay_ms=0))
    for key, value, headers, _reason in bad:
        await kafka.send(ns.ingest, key, value, [*headers, ("origin", b"test")])
    await kafka.send(ns.ingest, b"good-2", b"g", schedule_headers(target, due_ms=now_ms()))
    # Then every bad one is on the dead-letter topic, unchanged, with a readable reason
    dead = await kafka.collect([ns.dead_letters], lambda rs: len(rs) >= len(bad))
    assert len(dead) == len(bad)
    by_key = {record.key: record for record in dead}
    for key, value, headers, reason in bad:
        record = by_key[key]
        assert record.value == value
        got = headers_of(record)
        assert reason in got.pop("delayq-error").decode()
        assert got == dict([*headers, ("origin", b"test")])
    # And the worker went on: both good jobs were forwarded
    good = await kafka.collect([target], lambda rs: len(rs) >= 2)
    assert sorted(r.key for r in good) == [b"good-1", b"good-2"]


async def test_a_forward_that_cannot_succeed_ends_on_the_dead_letter_topic(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    # Given a worker whose targets take records of at most 2 KiB
    start_worker(DELAYQ_MAX_FORWARD_BYTES="2048")
    # When a job too large to forward falls due, next to a small one
    await kafka.send(ns.ingest, b"big", b"x" * 4_096, schedule_headers(ns.target(), delay_ms=0))
    await kafka.send(ns.ingest, b"small", b"s", schedule_headers(ns.target(), delay_ms=0))
    # Then the big one is dead-lettered with everything needed to schedule it again
    dead = await kafka.collect([ns.dead_letters], lambda rs: len(rs) >= 1)
    assert [r.key for r in dead] == [b"big"]
    headers = headers_of(dead[0])
    assert b"exceeds max_forward_bytes" in headers["delayq-error"]
    assert headers["delayq-target"] == ns.target().encode()
    assert dead[0].value == b"x" * 4_096
    # And the small one was forwarded
    forwarded = await kafka.collect([ns.target()], lambda rs: len(rs) >= 1)
    assert [r.key for r in forwarded] == [b"small"]


async def test_a_delay_from_a_future_timestamp_counts_from_receipt(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    # Given a producer whose clock is a day ahead
    start_worker()
    ahead = now_ms() + 86_400_000
    sent_at = now_ms()
    # When it schedules a job 500 ms after its own timestamp
    await kafka.send(
        ns.ingest, b"skewed", b"v", schedule_headers(ns.target(), delay_ms=500), timestamp_ms=ahead
    )
    # Then the job fires about 500 ms after the worker read it, not a day later
    [record] = await kafka.collect([ns.target()], lambda rs: len(rs) >= 1)
    due = int(headers_of(record)["delayq-due-ms"])
    assert sent_at + 500 <= due < ahead
    assert record.timestamp >= due


async def test_the_offset_of_a_dead_lettered_record_is_committed_once_its_dead_letter_is_in(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    # Given a worker, and a bad record followed by a good one in ingest partition 0
    start_worker()
    bad = await kafka.send(ns.ingest, b"bad", b"v", [("delayq-delay-ms", b"0")], partition=0)
    good = await kafka.send(
        ns.ingest, b"good", b"g", schedule_headers(ns.target(), delay_ms=0), partition=0
    )
    # When its dead letter is written (in the background: the good job did not wait for it)
    await kafka.collect([ns.dead_letters], lambda rs: len(rs) >= 1)
    await kafka.collect([ns.target()], lambda rs: len(rs) >= 1)
    # Then the worker's consumer group commits past both: the record held back the commit
    # only until its dead letter was acknowledged
    tp = TopicPartition(ns.ingest, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=ns.app_id)
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + WAIT_S
        committed = await consumer.committed(tp)
        while (committed or 0) <= good.offset:
            assert asyncio.get_running_loop().time() < deadline, f"committed {committed}"
            await asyncio.sleep(0.2)
            committed = await consumer.committed(tp)
    finally:
        await consumer.stop()
    assert bad.offset < good.offset < committed
