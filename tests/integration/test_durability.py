"""Pending jobs survive a SIGKILLed worker (data dir kept or wiped); two workers share the work."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from rocksdict import Options, Rdict

from app.embedded import EmbeddedBroker
from app.jobs import Job, encode_job
from app.times import now_ms
from tables.keys import due_key, index_entry, split_due_key
from tables.rebuild import mark_for_rebuild
from tests.conftest import WorkerFactory
from tests.support import (
    WAIT_S,
    Kafka,
    Namespace,
    Worker,
    by_job_id,
    headers_of,
    missed_occurrences,
    occurrences,
    schedule_headers,
    wait_for,
)

pytestmark = pytest.mark.integration

JOBS = 300


async def schedule_jobs(kafka: Kafka, ns: Namespace, prefix: str, due: int) -> list[bytes]:
    ids = [f"{prefix}-{i:04}".encode() for i in range(JOBS)]
    await kafka.send_many(
        ns.ingest, [(job_id, job_id, schedule_headers(ns.target(), due_ms=due)) for job_id in ids]
    )
    return ids


async def changelog_holds(kafka: Kafka, ns: Namespace, records: int) -> None:
    """Wait until the worker has written ``records`` changelog records (2 per new job)."""
    changelog = f"{ns.app_id}-jobs-changelog"
    seen = await kafka.collect([changelog], lambda rs: len(rs) >= records)
    assert len(seen) >= records


async def ingest_committed(kafka: Kafka, ns: Namespace, commands: int) -> None:
    """Wait until the worker committed ``commands`` ingest offsets: Faust commits only once the
    changelog holds their changes, so a restart then finds everything in the changelog."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=ns.app_id)
    await consumer.start()
    try:
        tps = [TopicPartition(ns.ingest, p) for p in range(ns.partitions)]
        deadline = time.monotonic() + WAIT_S
        while sum([await consumer.committed(tp) or 0 for tp in tps]) < commands:
            assert time.monotonic() < deadline, "ingest offsets not committed in time"
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()


async def assert_all_forwarded_once_or_more_never_early(
    kafka: Kafka, ns: Namespace, ids: list[bytes], due: int
) -> int:
    records = await kafka.collect(
        [ns.target()], lambda rs: set(by_job_id(rs)) >= set(ids), timeout=90
    )
    delivered = by_job_id(records)
    missing = set(ids) - set(delivered)
    assert not missing, f"{len(missing)} jobs never forwarded"
    wanted = set(ids)
    ours = [r for r in records if headers_of(r)["delayq-job-id"] in wanted]
    for record in ours:
        assert record.timestamp >= int(headers_of(record)["delayq-due-ms"]) >= due
        assert record.value == headers_of(record)["delayq-job-id"]
    return len(ours) - len(ids)  # duplicates


#: Recurring jobs in the SIGKILL and hand-over tests: one per partition (most likely), every second.
SERIES = [b"series-%d" % i for i in range(8)]
EVERY = 1_000


async def schedule_series(kafka: Kafka, ns: Namespace) -> int:
    """Start :data:`SERIES`, each every :data:`EVERY` ms; their first occurrence."""
    first = now_ms() + 500
    every = str(EVERY).encode()
    await kafka.send_many(
        ns.ingest,
        [
            (s, b"s", schedule_headers(ns.target(), due_ms=first, delayq_every_ms=every))
            for s in SERIES
        ],
    )
    return first


async def series_go_on(kafka: Kafka, ns: Namespace, first: int, after: int, worker: Worker) -> None:
    """Wait until every series has an occurrence due after ``after``; check each is on time and
    in order, and that no more occurrences went unforwarded than ``worker`` counted skipped."""

    def went_on(records: list[Any]) -> bool:
        return all(max(occurrences(records, s), default=0) > after for s in SERIES)

    records = await kafka.collect([ns.target()], went_on)
    assert went_on(records), "a series stopped"
    missed = sum(missed_occurrences(records, s, first, EVERY) for s in SERIES)
    skipped = worker.get_json("/stats")["counters"]["occurrences_skipped"]
    assert missed <= skipped, f"{missed} occurrences never forwarded, {skipped} counted skipped"


@pytest.mark.parametrize("data_dir", ["kept", "wiped"])
async def test_pending_jobs_survive_a_sigkilled_worker(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory, tmp_path: Path, data_dir: str
) -> None:
    # Given a worker holding jobs due in a few seconds, some already fired, and recurring jobs
    # that fired twice
    worker = start_worker()
    await kafka.send_many(
        ns.ingest,
        [(b"early-%d" % i, b"e", schedule_headers(ns.target(), delay_ms=0)) for i in range(20)],
    )
    first = await schedule_series(kafka, ns)
    due = now_ms() + 4_000
    ids = await schedule_jobs(kafka, ns, "pending", due)
    await changelog_holds(kafka, ns, 2 * (JOBS + 20))
    await kafka.collect([ns.target()], lambda rs: all(len(occurrences(rs, s)) >= 2 for s in SERIES))
    # When it is SIGKILLed (no flush, no commit) and started again
    worker.kill()
    if data_dir == "wiped":
        shutil.rmtree(worker.data_dir)
    restarted = start_worker(data_dir=worker.data_dir)
    ready = now_ms()
    # Then every pending job is forwarded, none early
    duplicates = await assert_all_forwarded_once_or_more_never_early(kafka, ns, ids, due)
    assert duplicates == 0  # nothing had fired before the kill
    # And the 20 that had fired before the kill are still all there (at least once)
    early = await kafka.collect(
        [ns.target()], lambda rs: len({r.key for r in rs if r.key.startswith(b"early")}) >= 20
    )
    assert len({r.key for r in early if r.key.startswith(b"early")}) == 20
    # And the recurring jobs go on: the occurrences missed while no worker ran were skipped,
    # and counted, not lost
    await series_go_on(kafka, ns, first, ready + EVERY, restarted)


def write_local_only_job(data_dir: Path, job: Job) -> Path:
    """Put ``job`` in a stopped worker's local table only, as when its changelog write failed;
    the table directory."""
    db_path = sorted(data_dir.glob("**/*.db"))[0]
    db = Rdict(str(db_path), options=Options(raw_mode=True))
    try:
        key = due_key(job.due_ms, job.job_id)
        db[key] = encode_job(job)
        db.put(*index_entry(key))
    finally:
        db.close()
    return db_path.parent


async def test_a_table_marked_as_ahead_of_its_changelog_is_rebuilt_from_it_on_start(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    # Given a SIGKILLed worker whose pending jobs are all in the changelog
    worker = start_worker()
    due = now_ms() + 5_000
    ids = await schedule_jobs(kafka, ns, "pending", due)
    await ingest_committed(kafka, ns, JOBS)
    worker.kill()
    # And a job due earlier that only its local table holds, the table marked as ahead
    ghost = Job(b"ghost", due - 1_000, ns.target(), None, b"ghost", (), 0)
    tabledir = write_local_only_job(worker.data_dir, ghost)
    mark_for_rebuild(tabledir, "a changelog write failed (test)")
    # When it starts again with that data directory
    restarted = start_worker(data_dir=worker.data_dir)
    # Then every job the changelog holds is forwarded, and the local-only one is not
    records = await kafka.collect(
        [ns.target()], lambda rs: set(by_job_id(rs)) >= set(ids), timeout=90
    )
    forwarded = by_job_id(records)
    assert set(forwarded) == set(ids)
    assert "rebuilding the local tables from their changelogs" in restarted.log_since_start()


async def test_two_workers_split_the_partitions_and_fire_every_job(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    # Given two workers in one group
    a = start_worker("a")
    b = start_worker("b")

    def split() -> bool:
        ha, hb = a.health(), b.health()
        pa, pb = set(ha.get("active_partitions", [])), set(hb.get("active_partitions", []))
        return (
            ha["status"] == hb["status"] == "ok"
            and bool(pa)
            and bool(pb)
            and not pa & pb
            and pa | pb == set(range(ns.partitions))
        )

    wait_for(split, "both workers to own active partitions")
    # When jobs fall due on every partition, and recurring jobs run there
    first = await schedule_series(kafka, ns)
    due = now_ms() + 2_000
    ids = await schedule_jobs(kafka, ns, "shared", due)
    # Then together they forward every job
    await assert_all_forwarded_once_or_more_never_early(kafka, ns, ids, due)
    # And when one worker is killed, the survivor takes over its partitions and fires new jobs
    b.kill()
    wait_for(
        lambda: set(a.health().get("active_partitions", [])) == set(range(ns.partitions)),
        "the survivor to own every partition",
    )
    took_over = now_ms()
    due = now_ms() + 500
    later = await schedule_jobs(kafka, ns, "after-failover", due)
    await assert_all_forwarded_once_or_more_never_early(kafka, ns, later, due)
    # And the recurring jobs went on across the hand-over, each occurrence missed counted
    await series_go_on(kafka, ns, first, took_over + EVERY, a)


async def test_a_wiped_worker_restored_in_bulk_finds_replaces_and_cancels_by_id(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    # Given a worker (bulk restore on for any size) holding jobs due in an hour, each replaced
    # once, so that the changelog holds deleted due keys too
    bulk = {"DELAYQ_BULK_RESTORE_MIN_RECORDS": "1"}
    worker = start_worker(**bulk)
    far = now_ms() + 3_600_000
    ids = await schedule_jobs(kafka, ns, "held", far - 60_000)
    await schedule_jobs(kafka, ns, "held", far)
    await ingest_committed(kafka, ns, 2 * JOBS)
    # When it is SIGKILLed and started again with its data directory wiped
    worker.kill()
    shutil.rmtree(worker.data_dir)
    restarted = start_worker(data_dir=worker.data_dir, **bulk)
    # Then its changelog was read in bulk (no command is applied again), and it holds each job once
    assert "bulk restore of" in restarted.log_since_start()
    assert restarted.get_json("/stats")["counters"]["scheduled"] == 0
    wait_for(lambda: restarted.get_json("/stats").get("pending") == JOBS, "the jobs restored")
    # And its id index came back: half the jobs cancelled, the rest replaced to fall due now,
    # leave nothing pending (a lost index would leave the old due keys behind)
    cancelled, moved = ids[::2], ids[1::2]
    await kafka.send_many(ns.ingest, [(job_id, None, []) for job_id in cancelled])
    due = now_ms() + 500
    await kafka.send_many(
        ns.ingest, [(job_id, job_id, schedule_headers(ns.target(), due_ms=due)) for job_id in moved]
    )
    await assert_all_forwarded_once_or_more_never_early(kafka, ns, moved, due)
    wait_for(lambda: restarted.get_json("/stats").get("pending") == 0, "nothing left pending")
    forwarded = by_job_id(await kafka.collect([ns.target()], lambda rs: True, timeout=1))
    assert not set(cancelled) & set(forwarded)


def _live_in_changelog(records: list[Any]) -> set[bytes]:
    """Job ids whose due key's last record in the jobs changelog is a put (not a tombstone)."""
    last: dict[bytes, bytes | None] = {}
    for record in records:
        if record.key.startswith(b"D"):
            last[record.key] = record.value
    return {split_due_key(key)[1] for key, value in last.items() if value}


async def test_commands_applied_just_before_a_sigkill_reach_the_changelog_after_a_restart(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory, broker: EmbeddedBroker
) -> None:
    # Given a worker whose changelog holds 6,000 schedules (due in an hour: none fires)
    worker = start_worker()
    due = now_ms() + 3_600_000
    ids = [f"stream-{i:05}".encode() for i in range(6_000)]
    await kafka.send_many(
        ns.ingest, [(j, j, schedule_headers(ns.target(), due_ms=due)) for j in ids]
    )
    changelog = f"{ns.app_id}-jobs-changelog"
    await kafka.collect([changelog], lambda rs: _live_in_changelog(rs) == set(ids))
    # When it applies the cancels of every other job with the broker stopped, so that their
    # tombstones never reach the changelog, is SIGKILLed and started on its data directory
    cancelled = set(ids[::2])
    await kafka.send_many(ns.ingest, [(j, None, []) for j in sorted(cancelled)])
    wait_for(lambda: worker.get_json("/stats")["counters"]["cancelled"] > 0, "the first cancels")
    assert broker.pid is not None
    os.killpg(broker.pid, signal.SIGSTOP)
    try:
        applied = worker.get_json("/stats")["counters"]["cancelled"]
        wait_for(
            lambda: worker.get_json("/stats")["counters"]["cancelled"] > applied,
            "cancels applied while the broker is stopped",
        )
        worker.kill()
    finally:
        os.killpg(broker.pid, signal.SIGCONT)
    start_worker(data_dir=worker.data_dir)
    await ingest_committed(kafka, ns, len(ids) + len(cancelled))
    # Then the changelog holds every cancel: a standby or a restore from it misses none (applied
    # again after the restart, a cancel finds its job gone from the local table: it must not
    # have been kept there, ahead of the changelog)
    expected = set(ids) - cancelled
    records = await kafka.collect(
        [changelog], lambda rs: _live_in_changelog(rs) == expected, timeout=30
    )
    live = _live_in_changelog(records)
    assert not cancelled & live, f"{len(cancelled & live)} cancels applied but never changelogged"
    missing = expected - live
    assert not missing, f"{len(missing)} schedules missing from the changelog"
