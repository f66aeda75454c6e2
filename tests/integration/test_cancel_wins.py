"""A cancel or replace that the broker acknowledged before the due time always wins.

Each test builds one way the guarantee was broken before the ingest guard (app/guard.py) and
checks that the superseded schedule is never forwarded.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest

from app.moving import home_partition
from app.times import now_ms
from tests.conftest import WorkerFactory
from tests.support import Kafka, Namespace, schedule_headers, wait_for

pytestmark = __import__("pytest").mark.integration

#: Commands between a schedule and its cancel: seconds of work for a worker that starts late.
BACKLOG = 20_000


def ids(prefix: bytes, partitions: int, homes: range) -> Iterator[bytes]:
    """Job ids whose home partition is one of ``homes``."""
    candidates = (b"%s-%d" % (prefix, n) for n in itertools.count())
    return (i for i in candidates if home_partition(i, partitions) in homes)


@pytest.mark.parametrize("moved", [False, True], ids=["at-home", "moved"])
async def test_a_cancel_behind_a_backlog_wins_when_the_worker_lags_past_the_due_time(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory, moved: bool
) -> None:
    # Given, all written to ingest partition 0: a job and a job to replace, due at T; a backlog
    # of other jobs; then the cancel of the first and the replacement of the second; a marker
    # due after T. At home there, or (moved) jobs whose home is another partition: the three
    # watched ones share home partition 1, where due order puts the replacement before the marker
    due = now_ms() + 8_000
    target = ns.target()
    watched = range(1, 2) if moved else range(0, 1)
    cancelled, replaced, marker = (
        next(ids(n, ns.partitions, watched)) for n in (b"cancelled", b"replaced", b"marker")
    )
    others = range(1, ns.partitions) if moved else range(0, 1)
    fillers = itertools.islice(ids(b"filler", ns.partitions, others), BACKLOG)
    first = [
        (cancelled, b"old", schedule_headers(target, due_ms=due)),
        (replaced, b"old", schedule_headers(target, due_ms=due)),
    ]
    backlog = [
        (filler, b"f", schedule_headers(target, due_ms=due + 3_600_000)) for filler in fillers
    ]
    last = [
        (cancelled, None, []),
        (replaced, b"new", schedule_headers(target, due_ms=due)),
        (marker, b"m", schedule_headers(target, due_ms=due + 1)),
    ]
    await kafka.send_many(ns.ingest, [*first, *backlog, *last], partition=lambda _i: 0)
    # And the broker acknowledged all of it before T
    acknowledged = now_ms()
    assert acknowledged < due, "the setup took too long: the test needs the acks before T"
    # When the worker starts only after T: it reaches the cancel seconds after the job is due
    wait_for(lambda: now_ms() > due, "the due time to pass")
    start_worker()
    records = await kafka.collect([target], lambda rs: any(r.key == marker for r in rs))
    # Then the cancelled job was never forwarded, and the replaced one only with its new value
    forwarded = sorted((r.key, r.value) for r in records)
    assert forwarded == sorted([(marker, b"m"), (replaced, b"new")])


async def test_jobs_fire_without_waiting_for_new_commands_when_the_worker_is_caught_up(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    # Given a caught-up worker with nothing to do
    start_worker()
    # When one job is scheduled, due in half a second, and nothing else is written
    due = now_ms() + 500
    await kafka.send(ns.ingest, b"lone", b"x", schedule_headers(ns.target(), due_ms=due))
    # Then it is forwarded, on time within a second (the guard's probe is one round trip)
    records = await kafka.collect([ns.target()], lambda rs: len(rs) >= 1)
    assert [r.key for r in records] == [b"lone"]
    assert due <= records[0].timestamp < due + 1_000


async def test_replaces_moved_in_shortly_before_the_due_time_win_on_two_workers(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    # Given two workers, and for 8 s: 40 jobs every 20 ms written to their home partitions,
    # due 1.5 s later, each replaced 0.6 s before its due time by a producer that writes to
    # the next partition (moved home: its partition's owner is often the other worker)
    start_worker("a")
    start_worker("b")
    target = ns.target()
    replaced: set[bytes] = set()
    waiting: list[tuple[bytes, int]] = []
    stop = now_ms() + 8_000
    n = 0
    while now_ms() < stop:
        now = now_ms()
        fresh = [b"job-%d" % i for i in range(n, n + 40)]
        n += 40
        await kafka.send_many(
            ns.ingest, [(j, b"old", schedule_headers(target, due_ms=now + 1_500)) for j in fresh]
        )
        waiting += [(j, now + 1_500) for j in fresh]
        due_soon = [(j, due) for j, due in waiting if due - 600 <= now]
        waiting = waiting[len(due_soon) :]
        if due_soon:
            await kafka.send_many(
                ns.ingest,
                [(j, b"new", schedule_headers(target, due_ms=due)) for j, due in due_soon],
                partition=lambda k, jobs=due_soon: (
                    (home_partition(jobs[k][0], ns.partitions) + 1) % ns.partitions
                ),
            )
            replaced.update(j for j, _due in due_soon)
        await asyncio.sleep(0.02)
    # When every replaced job has been forwarded
    records = await kafka.collect([target], lambda rs: replaced <= {r.key for r in rs})
    # Then none was forwarded with its replaced value
    outdated = sorted({r.key for r in records if r.key in replaced and r.value == b"old"})
    assert outdated == [], f"{len(outdated)} outdated forwards, e.g. {outdated[:5]}"
