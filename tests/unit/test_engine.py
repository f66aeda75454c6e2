"""The engine driven by a fixed clock: real RocksDB partitions, a recording producer.

The producer stands in for Kafka here only; tests/integration runs the same engine against the
embedded broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.engine import Engine, EngineConfig
from app.jobs import FENCE_PREFIX, Job, JobStatus, encode_job
from app.times import now_ms
from tables.keys import due_key
from tests.unit.engine_harness import NOW, RECEIVED, Harness


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


async def test_forwards_exactly_the_due_jobs_in_due_order_and_wakes_for_the_next(
    h: Harness,
) -> None:
    # Given jobs due before, at, and after now
    for job_id, due in [("c", NOW), ("a", NOW - 50), ("late", NOW + 1), ("b", NOW - 10)]:
        h.schedule(job_id, due)
    # When the loop fires at now
    wake = await h.fire(NOW)
    # Then the due ones went out earliest first, never the one due 1 ms later
    assert h.forwarded_ids() == [b"a", b"b", b"c"]
    assert wake == NOW + 1
    # and they carry the stable de-dup headers
    headers = dict(h.producer.to("out")[0][4])
    assert headers == {"delayq-job-id": b"a", "delayq-due-ms": str(NOW - 50).encode()}


async def test_a_job_stays_until_its_removal_record_is_applied(h: Harness) -> None:
    h.schedule("a", NOW)
    await h.fire(NOW)
    # Before the fired record comes back the job is still stored but not forwarded again
    assert h.engine.get(0, b"a") is not None
    await h.fire(NOW + 5)
    assert h.forwarded_ids() == [b"a"]
    # When the removal is applied, the job and its id index are gone, in the changelog too
    h.ack_all()
    await h.engine.flush()
    assert h.engine.get(0, b"a") is None
    assert h.dbs[0].get(b"Ia") is None
    assert (0, due_key(NOW, b"a"), None) in h.changelog
    # Only due keys are changelogged: the id index is derived
    assert all(key.startswith(b"D") for _p, key, _v in h.changelog)


async def test_an_unacknowledged_forward_is_sent_again_after_the_ack_timeout(h: Harness) -> None:
    h.schedule("a", NOW)
    await h.fire(NOW)
    h.producer.take_fired()  # the removal record is lost
    await h.fire(NOW + 299_999)
    assert h.forwarded_ids() == [b"a"]
    await h.fire(NOW + 300_001)
    assert h.forwarded_ids() == [b"a", b"a"]


def count_reads(h: Harness) -> list[int]:
    """Count the table items the engine's scans yield (one counter, reset by the caller)."""
    reads = [0]
    scan = h.store.scan

    def counting_scan(*args: Any, **kwargs: Any) -> Iterator[tuple[bytes, bytes]]:
        for item in scan(*args, **kwargs):
            reads[0] += 1
            yield item

    h.store.scan = counting_scan  # type: ignore[method-assign,assignment]
    return reads


async def hundred_in_flight(h: Harness) -> list[int]:
    """Given 100 forwarded jobs whose removal records have not come back yet: a read counter."""
    for i in range(100):
        h.schedule(f"a{i:03d}", NOW + i)
    await h.fire(NOW + 99)
    return count_reads(h)


async def test_a_pass_does_not_read_again_the_jobs_whose_removal_is_on_its_way(
    h: Harness,
) -> None:
    reads = await hundred_in_flight(h)
    # When the next job falls due
    h.schedule("next", NOW + 100)
    await h.fire(NOW + 100)
    # Then the pass reads that job alone, not the 100 in flight
    assert h.forwarded_ids()[-1] == b"next"
    assert reads[0] == 1
    # And a pass before anything else is due reads nothing at all
    reads[0] = 0
    h.schedule("later", NOW + 500)
    assert await h.fire(NOW + 101) == NOW + 500
    assert reads[0] == 0


async def test_a_job_written_behind_the_cursor_is_sent_without_reading_the_jobs_in_flight(
    h: Harness,
) -> None:
    reads = await hundred_in_flight(h)
    # When a job arrives that was due among them (e.g. after ingest lag), and one due later
    h.schedule("late", NOW + 10)
    h.schedule("next", NOW + 100)
    await h.fire(NOW + 100)
    # Then the pass sends both in due order and walks only from the cursor
    assert h.forwarded_ids()[-2:] == [b"late", b"next"]
    assert reads[0] == 1


async def test_a_lost_removal_record_sends_the_jobs_again_at_once(h: Harness) -> None:
    h.schedule("a", NOW)
    h.schedule("b", NOW + 1)
    await h.fire(NOW + 1)
    h.producer.failing.add("fired")
    h.schedule("c", NOW + 2)
    await h.fire(NOW + 2)  # c's removal record is refused by the broker
    assert h.engine.wake_requested
    h.producer.failing.clear()
    await h.fire(NOW + 3)
    assert h.forwarded_ids() == [b"a", b"b", b"c", b"c"]


async def test_removals_of_several_passes_share_one_record_per_partition(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, removal_linger_ms=3_600_000)  # only settled() sends them
    for i in range(3):
        h.schedule(f"p0-{i}", NOW + i, partition=0)
        h.schedule(f"p1-{i}", NOW + i, partition=1)
    await h.engine.flush()
    await h.pass_fences()
    for i in range(3):
        await h.fire_due(NOW + i, [0, 1])
        for _ in range(5):
            await asyncio.sleep(0)  # the passes' acks come in
    assert h.producer.take_fired() == []
    await h.engine.settled()
    removals = h.producer.take_fired()
    assert sorted(p for p, _ in removals) == [0, 1]
    assert all(len(entries) == 3 for _, entries in removals)
    h.close()


async def test_replace_keeps_only_the_latest_schedule(h: Harness) -> None:
    h.schedule("a", NOW + 1_000, value=b"first")
    h.schedule("a", NOW + 2_000, value=b"second")
    await h.fire(NOW + 1_500)
    assert h.forwarded_ids() == []
    await h.fire(NOW + 2_000)
    assert [s[2] for s in h.producer.to("out")] == [b"second"]
    assert h.engine.stats.replaced == 1


async def test_a_replacement_during_flight_survives_the_old_removal(h: Harness) -> None:
    # Given a job forwarded but not yet removed
    h.schedule("a", NOW, value=b"old")
    await h.fire(NOW)
    # When it is replaced with the same due time (same due key), then the removal arrives
    h.schedule("a", NOW, value=b"new")
    h.ack_all()
    # Then the replacement is still pending and fires next
    job = h.engine.get(0, b"a")
    assert job is not None and job.value == b"new"
    await h.fire(NOW + 1)
    assert [s[2] for s in h.producer.to("out")] == [b"old", b"new"]


async def test_cancel_removes_a_pending_job_and_counts_unknown_ids(h: Harness) -> None:
    h.schedule("a", NOW + 10)
    assert h.engine.cancel(0, b"a").outcome == "cancelled"
    assert h.engine.cancel(0, b"nope").outcome == "unknown"
    await h.fire(NOW + 100)
    assert h.forwarded_ids() == []
    assert (h.engine.stats.cancelled, h.engine.stats.cancel_unknown) == (1, 1)


async def test_a_job_earlier_than_the_watermark_is_still_found(h: Harness) -> None:
    h.schedule("later", NOW + 500)
    await h.fire(NOW)  # the watermark moves up to NOW + 500
    h.schedule("past", NOW - 1_000)
    await h.fire(NOW + 1)
    assert h.forwarded_ids() == [b"past"]


async def test_after_a_rebalance_records_restored_behind_the_engine_are_found(h: Harness) -> None:
    h.schedule("later", NOW + 500)
    await h.fire(NOW)
    # Given a record restored from the changelog, not seen by the agent
    h.dbs[0].put(due_key(NOW - 5, b"restored"), h.dbs[0].get(due_key(NOW + 500, b"later")))
    # When the assignment generation changes
    h.engine.sync_assignment(2, [0, 1])
    await h.fire(NOW + 1)
    assert h.forwarded_ids() == [b"later"]  # its stored job says "later": it was copied


async def test_a_full_batch_asks_to_run_again_at_once(tmp_path: Path) -> None:
    h = Harness(tmp_path, fire_batch_max=2)
    for i in range(5):
        h.schedule(f"j{i}", NOW - 10 + i)
    assert await h.fire(NOW) == NOW
    assert len(h.forwarded_ids()) == 2
    await h.fire(NOW)
    await h.fire(NOW)
    assert h.forwarded_ids() == [b"j0", b"j1", b"j2", b"j3", b"j4"]
    h.close()


async def test_partitions_are_independent(h: Harness) -> None:
    h.schedule("p0", NOW, partition=0)
    h.schedule("p1", NOW - 1, partition=1)
    await h.fire(NOW)
    assert sorted(h.forwarded_ids()) == [b"p0", b"p1"]
    fired = dict(h.producer.take_fired())
    assert set(fired) == {0, 1}


async def test_failing_forwards_retry_with_backoff_then_go_to_dead_letters(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, forward_attempts=3, forward_retry_backoff_ms=100)
    h.producer.failing.add("out")
    h.schedule("a", NOW)
    await h.fire(NOW)  # attempt 1 fails (known once its pass settled): retry after 100 ms
    assert h.engine.wake_requested  # the loop looks again at once, and plans the retry
    assert await h.fire(NOW) == NOW + 100
    assert await h.fire(NOW + 50) == NOW + 100  # not yet
    await h.fire(NOW + 100)  # attempt 2 fails: retry after 200 ms
    assert await h.fire(NOW + 100) == NOW + 300
    await h.fire(NOW + 300)  # attempt 3 fails: dead-lettered, then removed
    dead = h.producer.to("dlq")
    assert len(dead) == 1
    headers = dict(dead[0][4])
    assert b"after 3 attempts" in headers["delayq-error"]
    assert headers["delayq-target"] == b"out"
    assert headers["delayq-due-ms"] == str(NOW).encode()
    h.ack_all()
    assert h.engine.get(0, b"a") is None
    assert h.engine.stats.dead_lettered == 1
    h.close()


async def test_when_dead_letters_fail_too_the_job_is_kept(tmp_path: Path) -> None:
    h = Harness(tmp_path, forward_attempts=1)
    h.producer.failing.update({"out", "dlq"})
    h.schedule("a", NOW)
    await h.fire(NOW)
    assert h.producer.take_fired() == []
    assert h.engine.get(0, b"a") is not None
    h.close()


async def test_a_schedule_earlier_than_the_planned_wake_interrupts_the_sleep(h: Harness) -> None:
    now = now_ms()  # sleep_until sleeps on the real clock
    h.schedule("far", now + 60_000)
    wake = await h.fire(now)
    sleeper = asyncio.create_task(h.engine.sleep_until(wake))
    await asyncio.sleep(0)
    assert not sleeper.done()
    h.schedule("soon", now + 10)
    await asyncio.wait_for(sleeper, 5)


async def test_the_agent_lets_a_due_pass_run_before_it_applies_more_commands(
    h: Harness,
) -> None:
    # Given the loop asleep until a far wake-up
    h.schedule("far", now_ms() + 60_000)
    await h.fire(now_ms())

    async def one_pass() -> None:
        await h.engine.sleep_until(now_ms() + 60_000)
        await h.fire_due(now_ms(), sorted(h.dbs))

    loop_pass = asyncio.create_task(one_pass())
    await asyncio.sleep(0)
    # When the agent, amid a batch, schedules a job that is due already
    job = h.schedule("due", now_ms() - 1)
    await h.engine.yield_to_due_pass()
    # Then the pass has taken it (in flight) before the agent goes on
    assert h.engine.status(0, job) is JobStatus.IN_FLIGHT
    await loop_pass
    assert h.forwarded_ids() == [b"due"]


async def test_an_oversized_forward_is_dead_lettered_without_retries(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_forward_bytes=1_000, forward_attempts=5)
    h.schedule("big", NOW, value=b"x" * 2_000)
    h.schedule("small", NOW, value=b"x" * 10)
    await h.fire(NOW)
    assert h.forwarded_ids() == [b"small"]
    dead = h.producer.to("dlq")
    assert [d[1] for d in dead] == [b"big"]
    assert b"exceeds max_forward_bytes" in dict(dead[0][4])["delayq-error"]
    h.close()


async def test_pending_count_is_counted_once_then_kept_up_to_date(h: Harness) -> None:
    for i in range(5):
        h.schedule(f"j{i}", NOW + i, partition=i % 2)
    assert h.engine.pending_count([0, 1]) == 5  # counted from the id index
    h.schedule("j0", NOW + 100)  # a replacement adds nothing
    h.engine.cancel(1, b"j1")
    h.schedule("new", NOW + 50, partition=1)
    assert h.engine.pending_count([0, 1]) == 5
    await h.fire(NOW + 3)
    h.ack_all()
    assert h.engine.pending_count([0, 1]) == 3  # j2 and j3 fired: j0, j4 and new remain
    h.engine.sync_assignment(9, [0, 1])  # after a rebalance it counts again
    assert h.engine.pending_count([0, 1]) == 3


async def test_earliest_lists_pending_jobs_across_partitions_in_due_order(h: Harness) -> None:
    for i, due in enumerate([30, 10, 20, 40]):
        h.schedule(f"j{i}", NOW + due, partition=i % 2)
    jobs = h.engine.earliest([0, 1], limit=3)
    assert [j.job_id for j in jobs] == [b"j1", b"j2", b"j0"]
    assert [j.job_id for j in h.engine.earliest([0, 1], limit=10, before_ms=NOW + 25)] == [
        b"j1",
        b"j2",
    ]
    assert h.engine.status(1, jobs[0]).value == "pending"


async def test_a_removal_of_a_replaced_in_flight_job_wakes_the_loop(h: Harness) -> None:
    # Given a job in flight, replaced with the same due time
    h.schedule("a", NOW, value=b"old")
    await h.fire(NOW)
    h.schedule("a", NOW, value=b"new")
    await h.fire(NOW + 1)  # the replacement waits for the old removal
    assert [s[2] for s in h.producer.to("out")] == [b"old"]
    sleeper = asyncio.create_task(h.engine.sleep_until(now_ms() + 60_000))
    await asyncio.sleep(0)
    # When the old removal arrives, the loop wakes for the replacement
    h.ack_all()
    await asyncio.wait_for(sleeper, 5)
    await h.fire(NOW + 2)
    assert [s[2] for s in h.producer.to("out")] == [b"old", b"new"]


async def test_a_stalled_target_does_not_hold_up_the_others(tmp_path: Path) -> None:
    h = Harness(tmp_path, forward_timeout_s=0.2)
    stalled = asyncio.Event()
    send = h.producer.send

    async def slow_for_stuck(topic: str, *args: Any) -> Awaitable[Any]:
        if args and topic == "out" and args[0] == b"stuck":
            await stalled.wait()  # never set: like metadata for a missing topic
        return await send(topic, *args)

    h.producer.send = slow_for_stuck  # type: ignore[method-assign]
    h.schedule("stuck", NOW)
    job = Job(b"other", NOW, "elsewhere", None, b"v", (), 99)
    h.engine.schedule(0, job, RECEIVED)
    await h.fire(NOW)
    assert [s[1] for s in h.producer.to("elsewhere")] == [b"other"]
    assert h.engine.stats.forward_failures == 1
    h.close()


async def test_the_id_index_is_rebuilt_from_replayed_changelog_records(h: Harness) -> None:
    # Given the changelog of a job scheduled, replaced, and another scheduled then removed
    h.schedule("a", NOW + 10)
    h.schedule("a", NOW + 20)
    h.schedule("b", NOW + 5)
    await h.fire(NOW + 5)
    h.ack_all()
    await h.engine.flush()
    # When a fresh database replays it (as Faust's recovery does)
    fresh = Harness(h.tmp_path / "replica")
    for partition, key, value in h.changelog:
        db = fresh.open_db(partition)
        if value is None:
            db.delete(key)
        else:
            db.put(key, value)
        fresh.store.index_restored(partition, key, value)
    # Then the replica finds, replaces and cancels by id exactly like the original
    job = fresh.engine.get(0, b"a")
    assert job is not None and job.due_ms == NOW + 20
    assert fresh.engine.get(0, b"b") is None
    assert fresh.engine.pending_count([0]) == 1
    assert fresh.engine.cancel(0, b"a").outcome == "cancelled"
    fresh.close()


async def test_timeline_counts_pending_jobs_per_bucket_and_says_when_cut(h: Harness) -> None:
    for i, due in enumerate([0, 59_999, 60_000, 125_000, 500_000]):
        h.schedule(f"j{i}", NOW + due, partition=i % 2)
    assert h.engine.timeline([0, 1], NOW, 60_000, 3) == ([2, 1, 1], True)
    assert h.engine.timeline([0, 1], NOW, 60_000, 3, max_scan=2) == ([1, 1, 0], False)


async def test_recent_dead_letters_are_remembered_with_their_reason(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_forward_bytes=1_000)
    h.schedule("big", NOW, value=b"x" * 2_000)
    await h.fire(NOW)
    [dead] = h.engine.stats.recent_dead_letters
    assert dead.key == b"big" and "exceeds max_forward_bytes" in dead.reason
    h.close()


async def test_a_dead_lettered_job_is_not_dead_lettered_again_before_its_removal(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, max_forward_bytes=1_000)
    h.schedule("big", NOW, value=b"x" * 2_000)
    await h.fire(NOW)
    await h.fire(NOW + 1)  # the removal record has not been applied yet
    assert len(h.producer.to("dlq")) == 1
    h.ack_all()
    assert h.engine.get(0, b"big") is None
    h.close()


async def test_a_replayed_command_is_recognised_once_applied(h: Harness) -> None:
    # Given commands at offsets 7 and 8 applied, then the job fired and removed
    assert h.engine.applied_offset(0) == -1
    h.engine.schedule(0, Job(b"a", NOW, "out", None, b"v", (), 7), RECEIVED)
    h.engine.mark_applied(0, 8)
    await h.fire(NOW)
    h.ack_all()
    # When Faust delivers offset 7 again after a crash, then it is known as applied
    assert h.engine.applied_offset(0) == 8
    assert h.engine.applied_offset(1) == -1  # per partition
    # And the marker is in the changelog, so a wiped worker knows it too
    await h.engine.flush()
    assert (0, b"A", (8).to_bytes(8, "big")) in h.changelog


async def test_a_new_partition_fires_only_after_its_fence_is_read_back(h: Harness) -> None:
    # Given a due job in a partition this worker was just given
    h.schedule("a", NOW)
    await h.engine.flush()
    # When its fence has been sent but not read back yet
    await h.engine.send_fences([0, 1], NOW)
    fences = h.producer.take_fences()
    assert sorted(p for p, _ in fences) == [0, 1]
    assert all(fence.startswith(FENCE_PREFIX) for _, fence in fences)
    await h.fire_due(NOW, [0, 1])
    # Then nothing is forwarded, and a stale fence does not release it
    assert h.forwarded_ids() == []
    h.engine.fence_passed(0, FENCE_PREFIX + b"stale")
    await h.fire_due(NOW, [0, 1])
    assert h.forwarded_ids() == []
    # And once the agent reads its own fence back, the job fires (fences are sent once)
    for partition, fence in fences:
        h.engine.fence_passed(partition, fence)
    await h.engine.send_fences([0, 1], NOW)
    assert h.producer.take_fences() == []
    await h.fire_due(NOW, [0, 1])
    assert h.forwarded_ids() == [b"a"]


async def test_removals_sent_before_the_fence_are_applied_before_firing(h: Harness) -> None:
    # Given a job the previous owner forwarded, whose removal record is in the fired topic
    job = h.schedule("a", NOW)
    await h.fire(NOW)
    assert h.forwarded_ids() == [b"a"]
    removals = h.producer.take_fired()
    # When the partition is handed over (revoked, then given back as new)
    await h.engine.quiesce([0, 1])
    h.engine.sync_assignment(2, [0, 1])
    await h.engine.send_fences([0, 1], NOW)
    fences = h.producer.take_fences()
    await h.fire_due(NOW + 1, [0, 1])
    # Then it is not forwarded again while the fence is out
    assert h.forwarded_ids() == [b"a"]
    # And the agent applies the removal, then the fence (fired-topic order): nothing is due
    for partition, entries in removals:
        h.engine.remove_fired(partition, entries)
    for partition, fence in fences:
        h.engine.fence_passed(partition, fence)
    await h.fire_due(NOW + 1, [0, 1])
    assert h.forwarded_ids() == [b"a"]
    assert h.engine.get(0, job.job_id) is None


async def test_quiesce_waits_for_the_running_pass_and_stops_firing(h: Harness) -> None:
    # Given a pass waiting for the broker's ack of a forward
    h.schedule("a", NOW)
    await h.pass_fences()
    release: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    plain_send = h.producer.send

    async def slow_send(topic: str, *args: Any) -> Awaitable[Any]:
        ack = await plain_send(topic, *args)
        return release if topic == "out" else ack

    h.producer.send = slow_send  # type: ignore[method-assign]
    await h.engine.flush()
    running = asyncio.ensure_future(h.fire_due(NOW, [0, 1]))
    await asyncio.sleep(0)
    # When the partitions are revoked
    quiescing = asyncio.ensure_future(h.engine.quiesce([0, 1]))
    for _ in range(20):  # let both tasks run as far as they can; no wall-clock wait
        await asyncio.sleep(0)
    # Then the revocation waits for the pass, which ends with its removal record sent
    assert not quiescing.done()
    release.set_result(None)
    await running
    await quiescing
    removals = h.producer.take_fired()
    assert [entries for _, entries in removals] == [[(due_key(NOW, b"a"), 1, NOW)]]
    # And the partitions are not fired again until they are fenced anew
    h.schedule("b", NOW, partition=1)
    await h.fire_due(NOW, [0, 1])
    assert h.forwarded_ids() == [b"a"]
    for partition, entries in removals:  # the fired topic holds the removal before the fence
        h.engine.remove_fired(partition, entries)
    await h.pass_fences()
    await h.fire_due(NOW, [0, 1])
    assert h.forwarded_ids() == [b"a", b"b"]


async def test_a_fence_the_broker_refused_is_sent_again(h: Harness) -> None:
    # Given the fired topic refuses writes
    h.producer.failing.add("fired")
    await h.engine.send_fences([0], NOW)
    await asyncio.sleep(0)
    # When it accepts them again, then the next pass sends the fence again
    h.producer.failing.clear()
    await h.engine.send_fences([0], NOW)
    assert [p for p, _ in h.producer.take_fences()] == [0]


async def test_a_fence_not_read_back_in_time_is_replaced(h: Harness) -> None:
    # Given a fence that was sent but never came back (a record the stream skipped)
    await h.engine.send_fences([0], NOW)
    [(_, first)] = h.producer.take_fences()
    # When the resend time has passed, then a new fence goes out and the old one is void
    await h.engine.send_fences([0], NOW + h.engine.config.fence_resend_ms - 1)
    assert h.producer.take_fences() == []
    await h.engine.send_fences([0], NOW + h.engine.config.fence_resend_ms)
    [(_, second)] = h.producer.take_fences()
    assert second != first
    h.engine.fence_passed(0, first)
    assert h.engine.fenced(0)
    h.engine.fence_passed(0, second)
    assert not h.engine.fenced(0)


async def test_changelog_records_the_producer_refused_go_out_with_the_next_flush(
    h: Harness,
) -> None:
    # Given jobs in two partitions, and a producer that refuses the first hand-off
    h.schedule("a", NOW + 1, partition=0)
    h.schedule("b", NOW + 2, partition=1)
    h.changelog_refusals = 1

    # When the agent flushes, fails, and flushes again (as its retry does)
    with pytest.raises(RuntimeError):
        await h.engine.flush()
    h.schedule("c", NOW + 3, partition=0)
    await h.engine.flush()

    # Then every record reached the changelog, each partition's in write order
    assert [(p, key) for p, key, _v in h.changelog if p == 0] == [
        (0, due_key(NOW + 1, b"a")),
        (0, due_key(NOW + 3, b"c")),
    ]
    assert [(p, key) for p, key, _v in h.changelog if p == 1] == [(1, due_key(NOW + 2, b"b"))]


async def test_the_replay_mark_reaches_the_database_only_once_the_changelog_has_it(
    h: Harness,
) -> None:
    # Given a schedule applied from ingest offset 7, and a broker slow to acknowledge
    h.held_acks = []
    h.engine.schedule(0, Job(b"a", NOW, "out", None, b"v", (), 7), RECEIVED)
    # When the agent marks offset 7 applied and hands the batch's changelog over
    h.engine.mark_applied(0, 7)
    await h.engine.flush()
    # Then the changelog gets the job, then the mark; this process knows offset 7 is applied
    assert [key for _p, key, _v in h.changelog] == [due_key(NOW, b"a"), b"A"]
    assert h.engine.applied_offset(0) == 7
    # But until the broker acknowledges, a worker restarted on this database (killed now)
    # does not see the mark, so it applies offset 7 again when Faust delivers it again
    restarted = Engine(
        h.store, h.producer, EngineConfig(fired_topic="fired", dead_letter_topic="dlq")
    )
    assert restarted.applied_offset(0) == -1
    # And once acknowledged, the database has it
    h.ack_changelog()
    await asyncio.sleep(0)  # the ack's callbacks run
    assert restarted.applied_offset(0) == 7


async def test_a_job_scheduled_in_the_past_is_late_only_from_its_receipt(h: Harness) -> None:
    # Given a job due at the epoch, received at NOW, and one due at NOW received before
    h.schedule("past", 0, received_ms=NOW)
    h.schedule("on-time", NOW)
    # When both are forwarded 7 ms after NOW
    await h.fire(NOW + 7)
    # Then each is 7 ms late (not 54 years), and the past-due arrival is counted apart
    assert h.forwarded_ids() == [b"past", b"on-time"]
    assert sorted(h.engine.stats.lateness_ms) == [7, 7]
    assert h.engine.stats.arrived_past_due == 1
    # And the forwarded record still says when the job was due
    assert dict(h.producer.to("out")[0][4])["delayq-due-ms"] == b"0"


async def test_a_past_due_job_restored_after_a_restart_is_late_from_its_receipt(
    h: Harness,
) -> None:
    # Given a job due at the epoch received at NOW, stored but not fired before a restart
    h.schedule("past", 0, received_ms=NOW)
    h.schedule("future", NOW + 60_000)
    await h.engine.flush()
    # When a new engine on the same database (a restarted worker) fires it 30 s later
    h.engine = Engine(
        h.store, h.producer, EngineConfig(fired_topic="fired", dead_letter_topic="dlq")
    )
    h.engine.sync_assignment(1, [0, 1])
    await h.fire(NOW + 30_000)
    # Then its lateness is the restart's 30 s (delayq's own delay), not the job's age
    assert h.forwarded_ids() == [b"past"]
    assert list(h.engine.stats.lateness_ms) == [30_000]


def test_only_a_job_past_due_on_arrival_stores_its_receipt_time(h: Harness) -> None:
    # Given a job on time and one past due when received
    on_time = h.schedule("on-time", NOW + 60_000, received_ms=NOW)
    past = h.schedule("past", 0, received_ms=NOW)
    # Then only the past one keeps its receipt, in 8 more bytes; the other stores as before
    assert h.engine.get(0, b"on-time") == on_time
    assert h.engine.get(0, b"past") == replace(past, received_ms=NOW)
    stored = {key: len(raw) for key, raw in h.dbs[0].items() if key.startswith(b"D")}
    assert stored[due_key(0, b"past")] == len(encode_job(past)) + 8
    assert stored[due_key(NOW + 60_000, b"on-time")] == len(encode_job(on_time))
