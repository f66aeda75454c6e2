"""Applying a batch of ingest records (app/ingest.py) with a stub producer and a fixed clock.

The agent in app/agents.py is this function wired to the worker; here every collaborator is a
stand-in: the harness's recording producer, a list for the skipped records read back, and a
clock at ``NOW``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from app.gaps import Record
from app.ingest import IngestContext, apply_batch
from app.jobs import encode_fired
from app.names import HEADER_DELAY_MS, HEADER_DUE_MS, HEADER_ERROR, HEADER_TARGET
from tables.keys import APPLIED_KEY, due_key, encode_due_ms
from tests.unit.engine_harness import NOW, Harness


class Wiring:
    """An :class:`IngestContext` over the harness, recording what the agent asks of Faust."""

    def __init__(self, h: Harness, owned: Sequence[int] = (0, 1)) -> None:
        self.h = h
        self.owned = list(owned)
        #: What the broker holds of the ingest topic, for read-backs: (partition, offset) -> record
        self.topic: dict[tuple[int, int], Record] = {}
        self.reads: list[tuple[int, int, int]] = []
        self.gaps: list[tuple[int, int, int]] = []
        #: (partition, offset) of delivered records the consumer may not commit past yet
        self.held: set[tuple[int, int]] = set()
        self.ctx = IngestContext(
            engine=h.engine,
            ingest_topic="ingest",
            fired_topic="fired",
            forbidden_targets=frozenset({"ingest", "fired"}),
            max_clock_skew_ms=1_000,
            owned_partitions=lambda: self.owned,
            read_skipped=self._read,
            acknowledge_skipped=self._acknowledge,
            hold=self._hold,
            hold_offset=self._hold_offset,
            clock=lambda: NOW,
        )

    def _hold(self, record: Record) -> Callable[[], None]:
        where = (record.partition, record.offset)
        self.held.add(where)
        return lambda: self.held.discard(where)

    def _hold_offset(self, partition: int, offset: int) -> Callable[[], None]:
        where = (partition, offset)
        self.held.add(where)
        return lambda: self.held.discard(where)

    async def _read(self, partition: int, start: int, stop: int) -> list[Record]:
        self.reads.append((partition, start, stop))
        return [
            self.topic[partition, o] for o in range(start, stop) if (partition, o) in self.topic
        ]

    async def _acknowledge(self, partition: int, start: int, last: int) -> None:
        self.gaps.append((partition, start, last))

    async def apply(self, *records: Record) -> None:
        for record in records:
            self.topic[record.partition, record.offset] = record
        await apply_batch(self.ctx, records)


def schedule(
    offset: int, job_id: bytes, due_ms: int, partition: int = 0, timestamp: float | None = None
) -> Record:
    headers = [(HEADER_TARGET, b"out"), (HEADER_DUE_MS, str(due_ms).encode())]
    return Record("ingest", partition, offset, job_id, b"v", headers, timestamp)


def cancel(offset: int, job_id: bytes, partition: int = 0) -> Record:
    return Record("ingest", partition, offset, job_id, None, [], None)


async def test_a_batch_is_applied_then_changelogged_with_its_replay_mark_last(h: Harness) -> None:
    # Given a schedule of a and b, and a cancel of b, in one batch
    wiring = Wiring(h)
    # When the batch is applied
    await wiring.apply(schedule(0, b"a", NOW + 5), schedule(1, b"b", NOW + 6), cancel(2, b"b"))
    # Then a is pending, b is not
    assert h.engine.get(0, b"a") is not None
    assert h.engine.get(0, b"b") is None
    # And the changelog got the writes in order, with the replay mark (offset 2) last
    assert [key for _p, key, _v in h.changelog] == [
        due_key(NOW + 5, b"a"),
        due_key(NOW + 6, b"b"),
        due_key(NOW + 6, b"b"),
        APPLIED_KEY,
    ]
    assert h.changelog[-1] == (0, APPLIED_KEY, encode_due_ms(2))
    assert h.engine.applied_offset(0) == 2


async def test_commands_delivered_again_after_a_crash_are_skipped(h: Harness) -> None:
    # Given a schedule then a cancel of the same job, applied
    wiring = Wiring(h)
    await wiring.apply(schedule(0, b"a", NOW + 5), cancel(1, b"a"))
    # When Faust delivers the schedule again (it had not committed its offset)
    await wiring.apply(schedule(0, b"a", NOW + 5))
    # Then the cancelled job does not come back
    assert h.engine.get(0, b"a") is None
    assert h.engine.stats.replays_skipped == 1


async def test_a_record_that_breaks_the_contract_is_dead_lettered_and_marked_handled(
    h: Harness,
) -> None:
    # Given a record without a key (no job id)
    wiring = Wiring(h)
    # When it is applied
    await wiring.apply(Record("ingest", 0, 0, None, b"v", [(HEADER_TARGET, b"out")], None))
    await h.engine.dead_letters_settled()
    # Then it went to the dead-letter topic with the reason, and its offset counts as handled
    assert wiring.held == set()
    [(_topic, _key, value, _partition, headers)] = h.producer.to("dlq")
    assert value == b"v"
    assert any(name == HEADER_ERROR for name, _value in headers)
    assert h.engine.applied_offset(0) == 0


async def test_offsets_the_stream_skipped_are_read_back_and_applied_first(h: Harness) -> None:
    # Given offset 0 applied, and offsets 1 and 2 in the topic but not delivered
    wiring = Wiring(h)
    await wiring.apply(schedule(0, b"a", NOW + 5))
    wiring.topic[0, 1] = schedule(1, b"b", NOW + 6)
    wiring.topic[0, 2] = cancel(2, b"a")
    # When offset 3 is delivered
    await wiring.apply(schedule(3, b"c", NOW + 7))
    # Then 1 and 2 were read back and applied before it, and Faust was told they are handled
    assert wiring.reads == [(0, 1, 3)]
    assert wiring.gaps == [(0, 1, 2)]
    assert h.engine.get(0, b"a") is None
    assert h.engine.get(0, b"b") is not None
    assert h.engine.get(0, b"c") is not None
    assert h.engine.stats.gaps_read_back == 2
    assert h.engine.applied_offset(0) == 3


async def test_records_of_a_partition_this_worker_lost_are_left_to_its_new_owner(
    h: Harness,
) -> None:
    # Given a worker that owns partition 0 only
    wiring = Wiring(h, owned=[0])
    # When a batch holds a record of partition 1 (read before the rebalance)
    await wiring.apply(schedule(0, b"a", NOW + 5, partition=1))
    # Then nothing is written for it
    assert h.engine.get(1, b"a") is None
    assert h.engine.stats.not_owned_skipped == 1
    assert h.changelog == []


async def test_a_fence_read_back_lets_its_partition_fire(h: Harness) -> None:
    # Given partition 1's fence sent and not yet read back
    wiring = Wiring(h)
    await h.engine.send_fences([1], NOW)
    [(partition, fence)] = h.producer.take_fences()
    assert h.engine.fenced(1)
    # When the agent reads it from the fired topic
    await wiring.apply(Record("fired", partition, 0, fence, b"", [], None))
    # Then the partition may fire
    assert not h.engine.fenced(1)


async def test_a_removal_record_deletes_the_forwarded_job(h: Harness) -> None:
    # Given a job forwarded from a partition whose fence was read back
    wiring = Wiring(h)
    await wiring.apply(schedule(0, b"a", NOW))
    await h.fire(NOW)
    [(partition, entries)] = h.producer.take_fired()
    # When its removal record comes back through the fired topic
    await wiring.apply(Record("fired", partition, 0, None, encode_fired(entries), [], None))
    # Then the job is gone
    assert h.engine.get(0, b"a") is None
    assert h.engine.stats.removed == 1


async def test_a_delay_counts_from_the_record_timestamp_unless_it_is_in_the_future(
    h: Harness,
) -> None:
    # Given two commands with a 10 s delay: one stamped 2 s ago, one 1 h ahead of this clock
    wiring = Wiring(h)
    delay = [(HEADER_TARGET, b"out"), (HEADER_DELAY_MS, b"10000")]
    past = Record("ingest", 0, 0, b"past", b"v", delay, (NOW - 2_000) / 1000)
    ahead = Record("ingest", 0, 1, b"ahead", b"v", delay, (NOW + 3_600_000) / 1000)
    # When they are applied
    await wiring.apply(past, ahead)
    # Then the first is due 10 s after its timestamp, the second 10 s after receipt (counted)
    assert (job := h.engine.get(0, b"past")) is not None and job.due_ms == NOW + 8_000
    assert (job := h.engine.get(0, b"ahead")) is not None and job.due_ms == NOW + 10_000
    assert h.engine.stats.clock_skew_corrected == 1


def invalid(offset: int, partition: int = 0) -> Record:
    """A record that breaks the contract: no target topic."""
    return Record("ingest", partition, offset, b"bad", b"v", [(HEADER_DUE_MS, b"1")], None)


async def test_a_dead_letter_the_broker_refuses_holds_only_the_commit(tmp_path: Path) -> None:
    h = Harness(tmp_path, forward_retry_backoff_ms=1)
    h.open_db(0)
    wiring = Wiring(h)
    # Given a dead-letter topic that refuses writes
    h.producer.failing.add("dlq")
    # When a batch holds a record that breaks the contract, then a schedule
    await wiring.apply(invalid(0), schedule(1, b"after", NOW + 60_000))
    # Then the batch is applied without waiting for the dead letter
    assert h.engine.get(0, b"after") is not None
    assert h.engine.applied_offset(0) == 1
    # And the consumer may not commit past the invalid record yet
    assert wiring.held == {(0, 0)}
    # When the topic takes writes again
    h.producer.failing.clear()
    await h.engine.dead_letters_settled()
    # Then the dead letter is written once and the record released
    assert len(h.producer.to("dlq")) == 1
    assert wiring.held == set()
    h.close()


async def test_a_replayed_record_that_breaks_the_contract_is_dead_lettered_again(
    h: Harness,
) -> None:
    # Given an invalid record applied (the replay mark passed it), then a crash before its
    # dead letter was acknowledged
    wiring = Wiring(h)
    h.producer.failing.add("dlq")
    await wiring.apply(invalid(0))
    h.producer.failing.clear()
    # When it is delivered again
    await wiring.apply(invalid(0))
    await h.engine.dead_letters_settled()
    # Then its dead letter is written (at least once)
    assert len(h.producer.to("dlq")) >= 1
    assert h.engine.stats.replays_skipped == 1


async def test_a_read_back_range_is_acknowledged_after_its_dead_letters(h: Harness) -> None:
    # Given offset 0 applied, and offset 1 (invalid) in the topic but not delivered
    wiring = Wiring(h)
    await wiring.apply(schedule(0, b"a", NOW + 60_000))
    wiring.topic[0, 1] = invalid(1)
    h.producer.failing.add("dlq")
    # When offset 2 is delivered
    await wiring.apply(schedule(2, b"b", NOW + 60_000))
    # Then offset 1 was read back, but its range is not acknowledged while the dead letter waits
    assert wiring.reads == [(0, 1, 2)]
    assert wiring.gaps == []
    h.producer.failing.clear()
    await h.engine.dead_letters_settled()
    # (the acknowledgement is a task of its own: wait, a bounded number of loop turns, for it)
    for _ in range(100):
        if wiring.gaps:
            break
        await asyncio.sleep(0)
    assert wiring.gaps == [(0, 1, 1)]
