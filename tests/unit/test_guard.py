"""The ingest guard (app/guard.py): a job fires only once the commands acknowledged before its
due time are applied. The engine with a stub producer and a fixed clock; the probe's answers are
given by hand (the worker's probe loop asks the broker: tests/integration/test_cancel_wins.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app.gaps import Record
from app.ingest import apply_batch
from tests.unit.engine_harness import NOW, Harness
from tests.unit.test_ingest import Wiring, cancel, schedule


async def fire(h: Harness, now: int) -> None:
    """A pass as the firing loop runs it: no probe unless the test gave one."""
    await h.pass_fences()
    await h.engine.fire_due(now, [0, 1])
    await h.engine.settled()


async def test_a_due_job_waits_for_a_probe_and_asks_for_one(h: Harness) -> None:
    # Given a job due now in a partition nobody has probed yet
    h.schedule("a", NOW - 10)
    # When a pass runs
    await fire(h, NOW)
    # Then nothing is forwarded, and the pass asked for a probe of that partition only
    assert h.forwarded_ids() == []
    assert h.engine.probe_wanted.is_set()
    assert h.engine.probe_targets([0, 1], NOW) == [0]
    # When the probe finds the partition caught up (taken at NOW)
    h.engine.observe_end_offsets(NOW, {0: 0})
    # Then the loop is woken, and the next pass forwards the job
    assert h.engine.wake_requested
    await fire(h, NOW)
    assert h.forwarded_ids() == [b"a"]


async def test_a_cancel_acknowledged_before_the_due_time_wins_while_the_agent_lags(
    h: Harness,
) -> None:
    # Given a job due at NOW - 10, applied at ingest offset 5
    h.schedule("a", NOW - 10)
    h.engine.mark_applied(0, 5)
    await fire(h, NOW)
    # And a probe taken at NOW finds end offset 7: a cancel at offset 6 is not applied yet
    h.engine.observe_end_offsets(NOW, {0: 7})
    # When passes run
    await fire(h, NOW + 5)
    # Then the job waits
    assert h.forwarded_ids() == []
    assert h.engine.waiting_probe(0) == (NOW, 7)
    assert h.engine.guard_lag_ms([0, 1], NOW + 5) == 15  # held since its due time
    # When the agent applies the cancel (offset 6)
    assert h.engine.cancel(0, b"a").outcome == "cancelled"
    h.engine.mark_applied(0, 6)
    # Then the probe is met and the cancelled job is never forwarded
    assert h.engine.waiting_probe(0) is None
    await fire(h, NOW + 10)
    assert h.forwarded_ids() == []


async def test_jobs_due_after_the_probe_wait_for_the_next_probe(h: Harness) -> None:
    # Given a partition probed caught up at NOW
    h.schedule("early", NOW - 1)
    h.schedule("late", NOW + 50)
    h.engine.observe_end_offsets(NOW, {0: 0, 1: 0})
    # When a pass runs at NOW + 100
    await fire(h, NOW + 100)
    # Then only the job due by the probe's time is forwarded; the other asks for a probe
    assert h.forwarded_ids() == [b"early"]
    assert h.engine.probe_targets([0, 1], NOW + 100) == [0]
    h.engine.observe_end_offsets(NOW + 100, {0: 0})
    await fire(h, NOW + 100)
    assert h.forwarded_ids() == [b"early", b"late"]


async def test_a_held_partition_does_not_make_the_loop_spin(h: Harness) -> None:
    # Given a due job held back by the guard
    h.schedule("a", NOW - 10)
    await h.pass_fences()
    # When a pass runs
    wake = await h.engine.fire_due(NOW, [0, 1])
    # Then the loop sleeps until something wakes it (the probe), not until the due time
    assert wake > NOW


async def test_jobs_named_by_commands_in_flight_wait_and_the_others_fire(h: Harness) -> None:
    # Given two jobs due, applied up to offset 5
    h.schedule("a", NOW - 10)
    h.schedule("b", NOW - 10)
    h.engine.mark_applied(0, 5)
    await fire(h, NOW)
    # When a probe at NOW finds end offset 7, and a peek finds that offset 6 is a command for "a"
    h.engine.observe_end_offsets(NOW, {0: 7}, {0: frozenset({b"a"})})
    await fire(h, NOW + 1)
    # Then "b" is forwarded at once, and "a" waits for its command
    assert h.forwarded_ids() == [b"b"]
    # When the agent applies it (a replace with a later due time)
    h.schedule("a", NOW + 60_000)
    h.engine.mark_applied(0, 6)
    # Then the old schedule of "a" is never forwarded
    assert h.engine.wake_requested
    await fire(h, NOW + 2)
    assert h.forwarded_ids() == [b"b"]


async def test_a_peek_that_cannot_tell_leaves_the_partition_to_the_agent(h: Harness) -> None:
    # Given a job due, applied up to offset 5, and a probe whose peek could not read offset 6
    h.schedule("a", NOW - 10)
    h.engine.mark_applied(0, 5)
    await fire(h, NOW)
    h.engine.observe_end_offsets(NOW, {0: 7}, {0: None})
    # Then the job waits until the agent has applied offset 6
    await fire(h, NOW + 1)
    assert h.forwarded_ids() == []
    h.engine.mark_applied(0, 6)
    await fire(h, NOW + 2)
    assert h.forwarded_ids() == [b"a"]


async def test_a_batch_that_failed_half_way_does_not_fire_what_it_superseded(h: Harness) -> None:
    # Given a batch: a job "x" due already (offset 1), then a record at offset 4; offsets 2-3
    # (the cancel of "x" at 3) were not delivered, and reading them back fails for now
    wiring = Wiring(h)
    wiring.topic[0, 3] = cancel(3, b"x")
    reads_fail = True

    async def read(partition: int, start: int, stop: int) -> list[Record]:
        if reads_fail:
            raise TimeoutError("the broker does not answer")
        return [
            wiring.topic[partition, o] for o in range(start, stop) if (partition, o) in wiring.topic
        ]

    ctx = dataclasses.replace(wiring.ctx, read_skipped=read)
    await apply_batch(ctx, [schedule(0, b"other", NOW + 60_000)])
    with pytest.raises(TimeoutError):
        await apply_batch(ctx, [schedule(1, b"x", NOW - 10), schedule(4, b"y", NOW + 60_000)])
    # When a pass runs meanwhile, after a probe that found end offset 5 and peeked at the
    # commands not applied (offsets 1-4: "x", the cancel of "x", "y")
    h.engine.observe_end_offsets(NOW, {0: 5}, {0: frozenset({b"x", b"y"})})
    await fire(h, NOW)
    # Then "x" is not forwarded: its own cancel is not applied yet
    assert h.forwarded_ids() == []
    # When the batch is applied again and the read-back works
    reads_fail = False
    await apply_batch(ctx, [schedule(1, b"x", NOW - 10), schedule(4, b"y", NOW + 60_000)])
    await fire(h, NOW + 1)
    # Then the cancel won: "x" is never forwarded
    assert h.forwarded_ids() == []
    assert h.engine.get(0, b"x") is None


async def test_with_the_guard_off_a_due_job_fires_without_a_probe(tmp_path: Path) -> None:
    # Given an engine with DELAYQ_INGEST_GUARD=false, and a job due already
    h = Harness(tmp_path, ingest_guard=False)
    h.open_db(0)
    h.schedule("a", NOW - 10)
    # When a pass runs, with no probe ever made
    await fire(h, NOW)
    # Then the job is forwarded, and no probe was asked for
    assert h.forwarded_ids() == [b"a"]
    assert not h.engine.probe_wanted.is_set()
    h.close()


async def test_with_the_guard_off_a_full_pass_asks_for_no_probe(tmp_path: Path) -> None:
    # Given DELAYQ_INGEST_GUARD=false, passes of one job at most, and two jobs due
    h = Harness(tmp_path, ingest_guard=False, fire_batch_max=1)
    h.open_db(0)
    h.schedule("a", NOW - 20)
    h.schedule("b", NOW - 10)
    # When a pass stops at its batch limit with a due job left
    await fire(h, NOW)
    # Then the job left waits for the next pass, not for a probe the guard does not need
    assert h.forwarded_ids() == [b"a"]
    assert not h.engine.probe_wanted.is_set()
    assert h.engine.guard_lag_ms([0], NOW) == 0
    h.close()


def expecting_a_move(h: Harness) -> None:
    """Job a due now in partition 0, caught up; a command for it at offset 40 of partition 1."""
    h.schedule("a", NOW - 10)
    h.engine.mark_applied(0, 5)
    h.engine.expect_move(0, b"a", 1, 40)
    h.engine.observe_end_offsets(NOW, {0: 6})


async def test_a_job_with_a_command_on_another_partition_waits_until_it_is_moved_here(
    h: Harness,
) -> None:
    # Given jobs a and b due now in partition 0, caught up there, and a probe that read, on
    # partition 1, a command for a at offset 40 not moved here yet
    h.schedule("b", NOW - 10)
    expecting_a_move(h)
    # When a pass runs
    await fire(h, NOW)
    # Then b fires and a waits for its command
    assert h.forwarded_ids() == [b"b"]
    # When the moved command (a cancel) is applied here
    assert h.engine.cancel(0, b"a").outcome == "cancelled"
    h.engine.mark_moved(0, 1, 40)
    # Then the loop looks again, and a is gone
    assert h.engine.wake_requested
    await fire(h, NOW)
    assert h.forwarded_ids() == [b"b"]


async def test_a_command_never_moved_stops_holding_its_job_once_committed_past(
    h: Harness,
) -> None:
    # Given a job a due now in partition 0, caught up, and a command for it read on partition 1
    # that will never be moved (it breaks the contract: dead-lettered where it landed)
    expecting_a_move(h)
    await fire(h, NOW)
    assert h.forwarded_ids() == []
    # Then the partition is probed although nothing is held back by its safe time
    assert h.engine.probe_targets([0, 1], NOW) == [0]
    # When a probe of partition 0 finds partition 1 committed past offset 40
    h.engine.observe_end_offsets(NOW + 1, {0: 6}, committed={1: 41})
    # Then a fires
    await fire(h, NOW + 1)
    assert h.forwarded_ids() == [b"a"]


async def test_a_move_committed_past_waits_while_the_probe_cannot_tell_it_is_applied(
    h: Harness,
) -> None:
    # Given job a due (partition 0, its safe time past the due time), held for a command read
    # on partition 1 at offset 40
    expecting_a_move(h)
    await fire(h, NOW)
    assert h.forwarded_ids() == []
    # When a probe finds partition 1 committed past it (the move is acknowledged: its copy is
    # in partition 0 below the end offset 9) while partition 0 has applied up to 5 only, and
    # the peek at offsets 6-8 cannot tell which jobs they name
    h.engine.observe_end_offsets(NOW + 1, {0: 9}, {0: None}, committed={1: 41})
    await fire(h, NOW + 1)
    # Then a still waits: its moved command may be among them
    assert h.forwarded_ids() == []
    # And once the agent applied them, a probe that finds partition 0 caught up releases it
    h.engine.mark_applied(0, 8)
    h.engine.observe_end_offsets(NOW + 2, {0: 9}, committed={1: 41})
    await fire(h, NOW + 2)
    assert h.forwarded_ids() == [b"a"]


async def test_committed_offsets_release_only_the_partitions_probed_with_them(
    h: Harness,
) -> None:
    # Given a command for a job of partition 0, read on partition 1, not moved yet
    expecting_a_move(h)
    # When a probe of partition 1 alone sees partition 1 committed past it (its move is on
    # partition 0's log, not applied: only a probe of partition 0 covers it)
    h.engine.observe_end_offsets(NOW + 1, {1: 50}, committed={1: 41})
    # Then the job still waits
    await fire(h, NOW)
    assert h.forwarded_ids() == []


def test_an_expected_move_already_applied_is_not_noted(h: Harness) -> None:
    # Given moves from partition 1 applied here up to offset 50
    h.engine.mark_moved(0, 1, 50)
    # When a probe reads a command at offset 40 of partition 1 for a job here
    h.engine.expect_move(0, b"a", 1, 40)
    # Then nothing waits for it
    assert h.engine.probe_targets([0, 1], NOW) == []


def test_a_home_partition_new_to_the_probe_reads_the_others_again(h: Harness) -> None:
    # Given a probe that read partition 1 up to offset 500 for home partition 0 alone
    h.engine.inbound_homes([0])
    h.engine.inbound_read_to(1, 500)
    assert h.engine.inbound_start(1, committed=100) == 500
    # When partition 2 becomes this worker's too
    h.engine.inbound_homes([0, 2])
    # Then partition 1 is read again from its committed offset: commands for 2 were passed over
    assert h.engine.inbound_start(1, committed=100) == 100
    # And losing a home partition reads nothing again
    h.engine.inbound_read_to(1, 600)
    h.engine.inbound_homes([2])
    assert h.engine.inbound_start(1, committed=100) == 600


async def test_a_partition_revoked_and_assigned_again_reads_the_others_again(h: Harness) -> None:
    # Given a probe that read partition 1 up to offset 500 for home partitions 0 and 1, and
    # noted a command for job a of partition 0 there
    h.engine.inbound_homes([0, 1])
    h.engine.expect_move(0, b"a", 1, 450)
    h.engine.inbound_read_to(1, 500)
    # When a rebalance revokes every partition and assigns the same ones again (Faust's eager
    # rebalance): the partition's state, and what it had noted, is gone
    await h.engine.quiesce([0, 1])
    h.engine.sync_assignment(2, [0, 1])
    h.engine.inbound_homes([0, 1])
    # Then the next probe reads partition 1 again from its committed offset
    assert h.engine.inbound_start(1, committed=100) == 100


async def test_a_probe_that_straddles_a_rebalance_frees_no_job(h: Harness) -> None:
    # Given job a due in partition 0, applied there up to offset 5, and a probe begun for it
    h.schedule("a", NOW - 10)
    h.engine.mark_applied(0, 5)
    began = h.engine.assignment_epoch
    h.engine.inbound_homes([0, 1], began)
    # When every partition is revoked and assigned again while the probe reads: the commands
    # for partition 0 it had noted went with the old state
    await h.engine.quiesce([0, 1])
    h.engine.assigned()
    h.engine.sync_assignment(2, [0, 1])
    h.engine.mark_applied(0, 5)  # the new assignment's agent got as far
    # And the probe then reads on (from its cursor) and finds partition 0 caught up
    h.engine.expect_move(0, b"b", 1, 520, began)
    h.engine.inbound_read_to(1, 600, began)
    h.engine.observe_end_offsets(NOW, {0: 6}, epoch=began)
    # Then a pass forwards nothing: a waits for a probe begun in the new assignment
    await fire(h, NOW)
    assert h.forwarded_ids() == []
    # And that probe reads the other partitions again from their committed offsets
    now_epoch = h.engine.assignment_epoch
    h.engine.inbound_homes([0, 1], now_epoch)
    assert h.engine.inbound_start(1, committed=100) == 100
    h.engine.observe_end_offsets(NOW, {0: 6}, epoch=now_epoch)
    await fire(h, NOW)
    assert h.forwarded_ids() == [b"a"]


async def test_a_state_made_between_revocation_and_assignment_is_not_kept(h: Harness) -> None:
    # Given job a due in partition 0, applied there up to offset 5
    h.schedule("a", NOW - 10)
    h.engine.mark_applied(0, 5)
    # When, after the partitions were revoked, work of the old assignment finishing late
    # makes a state for partition 0 and frees its due jobs (no probe of the new assignment)
    await h.engine.quiesce([0, 1])
    h.engine.mark_applied(0, 5)
    h.engine.observe_end_offsets(NOW, {0: 6})
    # And the same partitions are assigned again
    h.engine.assigned()
    h.engine.sync_assignment(2, [0, 1])
    h.engine.mark_applied(0, 5)  # the new assignment's agent got as far
    # Then a pass forwards nothing until a probe of the new assignment
    await fire(h, NOW)
    assert h.forwarded_ids() == []
    h.engine.observe_end_offsets(NOW, {0: 6}, epoch=h.engine.assignment_epoch)
    await fire(h, NOW)
    assert h.forwarded_ids() == [b"a"]
