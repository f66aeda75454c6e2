"""app.upstream.consumer's fetcher-to-stream hand-off: Faust's per-record steps, one task per fetch.

The consumer around ``_hand_over`` (its callback, gap and commit bookkeeping) is stubbed; the
hand-off itself is the real code. That it works against a broker is shown by every integration
test, whose workers all run it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncGenerator
from typing import Any

from faust.types import TP

from app.upstream.consumer import BatchDrainingConsumer

P0 = TP("ingest", 0)
P1 = TP("ingest", 1)


class _Message:
    def __init__(self, tp: TP, offset: int) -> None:
        self.tp = tp
        self.topic = tp.topic
        self.offset = offset


class _Topics:
    @staticmethod
    def acks_enabled_for(topic: str) -> bool:
        return True


class _App:
    topics = _Topics()


def _consumer(handled: list[tuple[TP, int]], block_at: int | None = None) -> Any:
    """A BatchDrainingConsumer without Faust around it; its callback records each hand-off."""
    consumer: Any = BatchDrainingConsumer.__new__(BatchDrainingConsumer)
    consumer.gaps = []
    consumer.commits = 0
    consumer.blocked = asyncio.Event()

    async def callback(message: _Message) -> None:
        if message.offset == block_at:
            consumer.blocked.set()
            await asyncio.Event().wait()  # a full stream buffer: never drains
        handled.append((message.tp, message.offset))

    async def add_gap(tp: TP, start: int, stop: int) -> None:
        consumer.gaps.append((tp, start, stop))

    async def commit() -> None:
        consumer.commits += 1

    consumer.callback = callback
    consumer._read_offset = defaultdict(lambda: None)
    consumer._commit_every = None
    consumer._n_acked = 0
    consumer._add_gap = add_gap
    consumer.commit = commit
    consumer.__dict__["app"] = _App()
    return consumer


class _Fetch:
    """One getmany's records as an async generator; remembers whether it was closed."""

    def __init__(self, records: list[tuple[TP, int]]) -> None:
        self.records = records
        self.closed = False

    async def _generate(self) -> AsyncGenerator[tuple[TP, _Message], None]:
        try:
            for tp, offset in self.records:
                yield tp, _Message(tp, offset)
        finally:
            self.closed = True

    async def hand_over(self, consumer: Any) -> None:
        records = self._generate()
        first = await anext(records)
        await consumer._hand_over(first, records)


async def test_every_record_of_a_fetch_is_handed_over_in_order() -> None:
    # Given a fetch with records of two partitions
    handled: list[tuple[TP, int]] = []
    consumer = _consumer(handled)
    fetch = _Fetch([(P0, 0), (P1, 0), (P0, 1), (P1, 1), (P0, 2)])
    # When it is handed over
    await fetch.hand_over(consumer)
    # Then the streams got every record in fetch order and the read offsets moved on
    assert handled == fetch.records
    assert (consumer._read_offset[P0], consumer._read_offset[P1]) == (2, 1)
    assert fetch.closed
    assert consumer.gaps == []


async def test_records_before_the_read_offset_are_dropped() -> None:
    # Given partition 0 read up to offset 5
    handled: list[tuple[TP, int]] = []
    consumer = _consumer(handled)
    consumer._read_offset[P0] = 5
    # When a fetch brings offsets 3-7 again
    await _Fetch([(P0, o) for o in range(3, 8)]).hand_over(consumer)
    # Then only 5-7 go to the streams (Faust's rule: an offset below the read offset was seen)
    assert handled == [(P0, 5), (P0, 6), (P0, 7)]


async def test_a_jump_in_offsets_is_recorded_as_a_gap() -> None:
    # Given partition 0 read up to offset 5
    handled: list[tuple[TP, int]] = []
    consumer = _consumer(handled)
    consumer._read_offset[P0] = 5
    # When the next record fetched is offset 9
    await _Fetch([(P0, 9)]).hand_over(consumer)
    # Then offsets 6-8 are a gap (Faust commits past it), and 9 is handed over
    assert consumer.gaps == [(P0, 6, 9)]
    assert handled == [(P0, 9)]


async def test_commits_when_enough_records_were_acked() -> None:
    # Given a consumer that commits every 10 acks, with 10 acked
    handled: list[tuple[TP, int]] = []
    consumer = _consumer(handled)
    consumer._commit_every = 10
    consumer._n_acked = 10
    # When a fetch is handed over
    await _Fetch([(P0, 0), (P0, 1)]).hand_over(consumer)
    # Then it committed once before handing over more
    assert consumer.commits == 1
    assert consumer._n_acked == 0
    assert len(handled) == 2


async def test_a_cancelled_hand_over_stops_and_closes_the_fetch() -> None:
    # Given a fetch whose second record waits on a full stream buffer
    handled: list[tuple[TP, int]] = []
    consumer = _consumer(handled, block_at=1)
    fetch = _Fetch([(P0, 0), (P0, 1), (P0, 2)])
    task = asyncio.ensure_future(fetch.hand_over(consumer))
    await consumer.blocked.wait()
    # When a rebalance cancels the hand-off
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # Then the records after the blocked one are not handed over, and the fetch is closed
    assert handled == [(P0, 0)]
    assert consumer._read_offset[P0] == 0
    assert fetch.closed


class _ConsumerThread:
    """The consumer thread's commit (the broker call), recording what it was asked to commit."""

    def __init__(self) -> None:
        self.committed: list[dict[TP, int]] = []

    async def commit(self, offsets: dict[TP, int]) -> bool:
        self.committed.append(dict(offsets))
        return True


async def test_no_offset_is_committed_once_commits_were_refused() -> None:
    # Given a consumer that commits
    consumer = _consumer([])
    consumer.__dict__["log"] = logging.getLogger("test")
    thread = consumer._thread = _ConsumerThread()
    assert await consumer._commit({P0: 5})
    # When commits are refused (a changelog write failed)
    consumer.refuse_commits("a changelog write failed")
    # Then no later commit reaches the broker, and Faust is told none was made
    assert not await consumer._commit({P0: 9, P1: 3})
    assert thread.committed == [{P0: 5}]
    assert consumer.commits_refused == "a changelog write failed"


def _committer(committed: int) -> Any:
    """A BatchDrainingConsumer's commit bookkeeping alone, last committed at ``committed``."""
    from intervaltree import IntervalTree

    consumer: Any = BatchDrainingConsumer.__new__(BatchDrainingConsumer)
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    consumer._gap = defaultdict(IntervalTree)
    consumer._committed_offset = defaultdict(lambda: None, {P0: committed})
    consumer._held = {}
    return consumer


def _commit(consumer: Any) -> int | None:
    """What the consumer commits now (noted as committed, as Faust does)."""
    offset: int | None = consumer._new_offset(P0)
    if offset is not None:
        consumer._committed_offset[P0] = offset
    return offset


def _ack(consumer: Any, *offsets: int) -> None:
    consumer._acked[P0].extend(offsets)
    consumer._acked_index[P0].update(offsets)


def test_no_commit_passes_a_held_record_at_the_committed_offset() -> None:
    # Given offsets from 100 on are read; 100 is held (its move not acknowledged), 101-104 acked
    consumer = _committer(100)
    release = consumer.hold_offset(P0, 100)
    _ack(consumer, 101, 102, 103, 104)
    # When the consumer works out what to commit
    # Then nothing: Faust's own check would commit 105, past the held record
    assert _commit(consumer) is None
    # And once the hold is released and the record acknowledged, everything up to 104 is
    release()
    _ack(consumer, 100)
    assert _commit(consumer) == 105


def test_a_commit_stops_below_the_lowest_held_offset() -> None:
    # Given 100-109 acked but for 105, held twice (a retried batch holds it again)
    consumer = _committer(100)
    first, second = consumer.hold_offset(P0, 105), consumer.hold_offset(P0, 105)
    _ack(consumer, 100, 101, 102, 103, 104, 106, 107, 108, 109)
    # When the consumer commits: up to 104
    assert _commit(consumer) == 105
    # Then one release leaves it held; the second frees it, and the rest commits once 105 is
    # acknowledged
    first()
    first()  # a release runs once
    _ack(consumer, 105)
    assert _commit(consumer) is None
    second()
    assert _commit(consumer) == 110


def test_known_holes_still_count_as_done_below_a_held_offset() -> None:
    # Given offsets 102-103 skipped (Faust's gap list), 100-101 and 104 acked, 110 held
    consumer = _committer(100)
    consumer._gap[P0].addi(102, 104)
    consumer.hold_offset(P0, 110)
    _ack(consumer, 100, 101, 104)
    # When the consumer commits, then the holes count as done, as in Faust
    assert _commit(consumer) == 105
