"""Schedule, cancel, replace, past-due and due order against a real worker and broker."""

from __future__ import annotations

import random

from app.moving import home_partition
from app.times import now_ms
from tests.conftest import WorkerFactory
from tests.support import Kafka, Namespace, by_job_id, create_topics, headers_of, schedule_headers

pytestmark = __import__("pytest").mark.integration


def count_at_least(n: int):  # type: ignore[no-untyped-def]
    return lambda records: len(records) >= n


async def test_a_job_is_forwarded_when_due_with_the_contract_headers(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    # Given a worker
    start_worker()
    due = now_ms() + 1_500
    # When a producer schedules one job by due time and one by delay, with its own header
    await kafka.send(
        ns.ingest,
        b"job-due",
        b"close order 1",
        schedule_headers(ns.target(), due_ms=due, trace=b"t-1", delayq_key=b"order-1"),
    )
    sent = await kafka.send(
        ns.ingest, b"job-delay", b"\x00\xffbinary", schedule_headers(ns.target(), delay_ms=1_000)
    )
    # Then both arrive on the target, never early, with value, key and headers as promised
    records = await kafka.collect([ns.target()], count_at_least(2))
    got = {r.key: r for r in records}
    assert set(got) == {b"order-1", b"job-delay"}
    first = got[b"order-1"]
    assert first.value == b"close order 1"
    assert headers_of(first) == {
        "trace": b"t-1",
        "delayq-job-id": b"job-due",
        "delayq-due-ms": str(due).encode(),
    }
    assert first.timestamp >= due
    second = got[b"job-delay"]
    assert second.value == b"\x00\xffbinary"
    assert headers_of(second)["delayq-due-ms"] == str(sent.timestamp + 1_000).encode()
    assert second.timestamp >= sent.timestamp + 1_000


async def test_a_cancelled_job_is_never_forwarded(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    start_worker()
    now = now_ms()
    # Given a job due in 2 s, cancelled at once
    await kafka.send(
        ns.ingest, b"cancelled", b"x", schedule_headers(ns.target(), due_ms=now + 2_000)
    )
    await kafka.send(ns.ingest, b"cancelled", None)
    # And a marker job due after it, on the same partition
    await kafka.send(ns.ingest, b"marker", b"m", schedule_headers(ns.target(), due_ms=now + 2_500))
    # When the marker has been forwarded
    records = await kafka.collect([ns.target()], lambda rs: any(r.key == b"marker" for r in rs))
    # Then the cancelled job never was
    assert [r.key for r in records] == [b"marker"]


async def test_a_replaced_job_fires_once_with_the_latest_schedule(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    start_worker()
    now = now_ms()
    # Given a job due in an hour, then replaced by one due in a second, with a new value
    await kafka.send(ns.ingest, b"r", b"v1", schedule_headers(ns.target(), due_ms=now + 3_600_000))
    await kafka.send(ns.ingest, b"r", b"v2", schedule_headers(ns.target(), due_ms=now + 1_000))
    # And a job replaced by a later time, then by an earlier one again
    await kafka.send(ns.ingest, b"s", b"s1", schedule_headers(ns.target(), due_ms=now + 800))
    await kafka.send(ns.ingest, b"s", b"s2", schedule_headers(ns.target(), due_ms=now + 3_600_000))
    await kafka.send(ns.ingest, b"s", b"s3", schedule_headers(ns.target(), due_ms=now + 1_200))
    await kafka.send(ns.ingest, b"marker", b"m", schedule_headers(ns.target(), due_ms=now + 2_000))
    records = await kafka.collect([ns.target()], lambda rs: any(r.key == b"marker" for r in rs))
    # Then each fired once, with its latest value
    assert [(r.key, r.value) for r in records] == [(b"r", b"v2"), (b"s", b"s3"), (b"marker", b"m")]


async def test_past_due_jobs_fire_at_once(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    start_worker()
    # Given jobs due an hour ago and at the epoch
    await kafka.send(
        ns.ingest, b"old", b"1", schedule_headers(ns.target(), due_ms=now_ms() - 3_600_000)
    )
    await kafka.send(ns.ingest, b"epoch", b"2", schedule_headers(ns.target(), due_ms=0))
    await kafka.send(ns.ingest, b"zero", b"3", schedule_headers(ns.target(), delay_ms=0))
    # Then all three are forwarded (no waiting for a tick)
    records = await kafka.collect([ns.target()], count_at_least(3))
    assert sorted(r.key for r in records) == [b"epoch", b"old", b"zero"]


async def test_a_null_value_forwards_a_tombstone(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    start_worker()
    await kafka.send(
        ns.ingest, b"expire-k", None, schedule_headers(ns.target(), delay_ms=0, delayq_key=b"k")
    )
    records = await kafka.collect([ns.target()], count_at_least(1))
    assert [(r.key, r.value) for r in records] == [(b"k", None)]


async def test_due_jobs_go_out_in_due_order_per_partition(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    start_worker()
    # Given 400 jobs in random order, written to random ingest partitions (most are moved to
    # their home partition), all due within 2 s of each other
    rng = random.Random(11)
    base = now_ms() + 3_000
    jobs = [
        (f"j{i:03}".encode(), base + rng.randrange(2_000), rng.randrange(ns.partitions))
        for i in range(400)
    ]
    partition_of = {job_id: home_partition(job_id, ns.partitions) for job_id, _d, _p in jobs}
    await kafka.send_many(
        ns.ingest,
        [(job_id, b"v", schedule_headers(ns.target(), due_ms=due)) for job_id, due, _p in jobs],
        partition=lambda i: jobs[i][2],
    )
    await create_topics(kafka.bootstrap, [ns.target()], 1)
    # When all are forwarded to a one-partition target
    records = await kafka.collect([ns.target()], count_at_least(len(jobs)))
    # Then each fired once, never early, and per home partition in due order
    assert sorted(by_job_id(records)) == sorted(job_id for job_id, _d, _p in jobs)
    per_partition: dict[int, list[int]] = {}
    for record in records:
        due = int(headers_of(record)["delayq-due-ms"])
        assert record.timestamp >= due
        per_partition.setdefault(partition_of[record.key], []).append(due)
    for dues in per_partition.values():
        assert dues == sorted(dues)
