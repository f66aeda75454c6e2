"""Faust's aiokafka consumer with a cheaper fetcher-to-stream hand-off.

Faust's ``Consumer._drain_messages`` hands every fetched record to the streams through
``Service.wait_first(callback(message), suspend_flow.wait())``: four tasks and an
``asyncio.wait`` per record, so that a rebalance (``suspend_flow``) can cancel a hand-off
blocked on a full stream buffer. Per record, that cost more than applying the command.

:class:`BatchDrainingConsumer` keeps that guarantee per fetch instead of per record: one task
hands over every record of one ``getmany`` in order, and a rebalance cancels that task. Per
record it does what Faust does (gap bookkeeping, commit cadence, read offsets, a yield to the
loop every 100 records); records after a cancelled one are not handed over, as in Faust, whose
``getmany`` stops at the first record after the flow stopped. Works the same on any Kafka.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.utils.functional import consecutive_numbers

import app.upstream  # noqa: F401  (checks the library versions first)

__all__ = ["BatchDrainingConsumer", "Transport", "acknowledge_gap"]

#: Records handed over between two yields to the event loop (Faust's figure).
_YIELD_EVERY = 100


class BatchDrainingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, handing each fetched batch to the streams in one task.

    It also stops committing offsets for good once :meth:`refuse_commits` was called (the
    local table got ahead of its changelog: tables/rebuild.py).
    """

    #: Why no offset is committed any more (None: they are).
    commits_refused: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Per partition, the offsets held from the commit, with how many holds each.
        self._held: dict[TP, Counter[int]] = {}

    def hold_offset(self, tp: TP, offset: int) -> Callable[[], None]:
        """Commit nothing at or past ``offset`` of ``tp`` until the returned callable runs.

        For a record whose move or dead letter the broker has not acknowledged: Faust's own
        bookkeeping lets a commit pass one unacknowledged record (:meth:`_new_offset`).
        """
        held = self._held.setdefault(tp, Counter())
        held[offset] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                held[offset] -= 1
                if held[offset] <= 0:
                    del held[offset]

        return release

    # Replaces faust/transport/consumer.py Consumer._new_offset (lines 1097-1150): the same
    # steps, and the run of acknowledged offsets committed stops below the lowest held one.
    # Correctness, no figure: Faust's head check (``min(acked) - committed > 1``) lets a commit
    # pass the one record at the committed offset while it is still in flight (upstream #606,
    # open PR #707). Seen in ``make chaos``: a moved cancel committed past before its move was
    # acknowledged, so the ingest guard stopped waiting for it and the job was forwarded.
    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        max_offset = max(acked)
        gaps = self._gap[tp]
        if gaps:  # known holes up to the highest acknowledged offset count as acknowledged
            ranges = sorted(gaps.overlap(0, max_offset), key=lambda gap: gap.begin)
            if ranges:
                filled = [offset for gap in ranges for offset in range(gap.begin, gap.end)]
                acked.extend(filled)
                gaps.chop(0, max(filled[-1], max_offset + 1))
        acked.sort()
        committed = self._committed_offset[tp]
        if committed and acked[0] - committed > 1:  # Faust's: a hole at the head, wait
            return None
        run: list[int] = list(next(consecutive_numbers(acked)))
        held = self._held.get(tp)
        if held:
            lowest = min(held)
            run = [offset for offset in run if offset < lowest]
            if not run:
                return None
        del acked[: len(run)]
        self._acked_index[tp].difference_update(run)
        return run[-1] + 1

    def refuse_commits(self, reason: str) -> None:
        """Commit no offset from now on, so that what was read since the last commit is read
        again after a restart."""
        if self.commits_refused is None:
            self.log.critical("consumer offsets are no longer committed: %s", reason)
            self.commits_refused = reason

    # Overrides faust/transport/consumer.py ThreadDelegateConsumer._commit (lines 1476-1477).
    # Correctness, not speed (tables/rebuild.py): no figure.
    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        # Faust flushes the producer first: a changelog batch that failed in that flush has
        # called refuse_commits by the time this runs.
        if self.commits_refused is not None:
            self.log.error("not committing: %s", self.commits_refused)
            return False
        return await super()._commit(offsets)

    # Replaces faust/transport/consumer.py Consumer._drain_messages (lines 1170-1249): the same
    # loop, with the per-record hand-off moved into :meth:`_hand_over`. Measured at 2,000 jobs/s
    # (`python -m bench --scenarios steady --contenders delayq --set steady_rate=2000
    # --set steady_s=30 --no-readme`, two runs each way): CPU per job 0.300 / 0.303 ms with
    # Faust's loop, 0.233 / 0.234 ms with this one.
    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's loop
        # The background task Faust's Fetcher runs: fetch, hand over, repeat until stopped.
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                # An async generator, though typed as an iterator.
                records = cast(AsyncGenerator[tuple[Any, Any], None], self.getmany(timeout=1.0))
                # getmany can return at once in a loop without ever giving up the loop.
                await self.sleep(0)
                if not self.should_stop:
                    # The wait for records stays outside the task a rebalance cancels (as in
                    # Faust); the rest of a fetch is in memory.
                    first = await anext(records, None)
                    if first is not None:
                        hand_over = self._hand_over(first, records)
                        await self.wait_first(hand_over, self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _hand_over(
        self, first: tuple[Any, Any], rest: AsyncGenerator[tuple[Any, Any], None]
    ) -> None:
        """Give each record of one fetch to the streams, in order (Faust's per-record steps)."""
        callback = self.callback
        read_offsets = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        try:
            item: tuple[Any, Any] | None = first
            since_yield = 0
            while item is not None:
                tp, message = item
                since_yield += 1
                if since_yield > _YIELD_EVERY:
                    await asyncio.sleep(0)
                    since_yield = 0
                offset = message.offset
                read_offset = read_offsets[tp]
                if read_offset is None or offset >= read_offset:  # else seen before: dropped
                    if read_offset and offset - read_offset > 1 and acks_enabled_for(tp.topic):
                        await self._add_gap(tp, read_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    await callback(message)
                    read_offsets[tp] = offset
                item = await anext(rest, None)
        finally:
            await rest.aclose()  # cancelled by a rebalance: the rest is not handed over


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`BatchDrainingConsumer`."""

    Consumer = BatchDrainingConsumer


async def acknowledge_gap(consumer: Any, topic: str, partition: int, start: int, last: int) -> None:
    """Tell Faust's consumer that offsets ``start..last`` are handled (it will commit past them).

    Calls faust/transport/consumer.py ``Consumer._add_gap`` (lines 1157-1168), which Faust calls
    itself for offsets it skips. Correctness (app/gaps.py): no figure.
    """
    await consumer._add_gap(TP(topic, partition), start, last)
