"""Faust's aiokafka transport with a cheaper hand-off from the fetcher to the streams.

Faust's ``Consumer._drain_messages`` hands every fetched record to the streams through
``Service.wait_first(callback(message), suspend_flow.wait())``: four tasks and an
``asyncio.wait`` per record, so that a rebalance (``suspend_flow``) can cancel a hand-off
blocked on a full stream buffer. Per record, that cost more than applying the command.

:class:`BatchDrainingConsumer` keeps that guarantee per fetch instead of per record: one task
hands over every record of one ``getmany`` in order, and a rebalance cancels that task. Per
record it does what Faust does (gap bookkeeping, commit cadence, read offsets, a yield to the
loop every 100 records); records after a cancelled one are not handed over, as in Faust, whose
``getmany`` stops at the first record after the flow stopped. Works the same on any Kafka.

:func:`send_batched` is the producer side: the engine's forwards and changelog records are
appended to aiokafka's record batches directly, and the caller gets one ack future per batch.
Per record, ``send`` and Faust's wrapper around it were the largest cost of a forward in the
worker's profiles.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, cast

from aiokafka.errors import KafkaTimeoutError, ProducerClosed
from aiokafka.structs import TopicPartition
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

__all__ = [
    "BatchDrainingConsumer",
    "Placed",
    "Record",
    "Transport",
    "send_batched",
    "send_batched_on",
]

#: Records handed over between two yields to the event loop (Faust's figure).
_YIELD_EVERY = 100


class BatchDrainingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, handing each fetched batch to the streams in one task.

    It also stops committing offsets for good once :meth:`refuse_commits` was called (the
    local table got ahead of its changelog: tables/rebuild.py).
    """

    #: Why no offset is committed any more (None: they are).
    commits_refused: str | None = None

    def refuse_commits(self, reason: str) -> None:
        """Commit no offset from now on, so that what was read since the last commit is read
        again after a restart."""
        if self.commits_refused is None:
            self.log.critical("consumer offsets are no longer committed: %s", reason)
            self.commits_refused = reason

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        # Faust flushes the producer first: a changelog batch that failed in that flush has
        # called refuse_commits by the time this runs.
        if self.commits_refused is not None:
            self.log.error("not committing: %s", self.commits_refused)
            return False
        return await super()._commit(offsets)

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


#: Key, value and headers of one record to produce (a list: aiokafka's batch builder, written
#: in Cython, takes no other sequence).
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]
#: Where an enqueued record went: the ack future of its record batch (its result's ``offset`` is
#: the batch's first offset), and the record's index in that batch.
Placed = tuple["asyncio.Future[Any]", int]


async def send_batched(
    producer: Any, topic: str, partition: int | None, records: Sequence[Record]
) -> list[Placed]:
    """Append ``records`` (in order) to the producer's record batches; where each went.

    ``producer`` is an ``AIOKafkaProducer``. ``partition`` None: each record goes where the
    producer's partitioner sends its key. This is aiokafka's ``send`` less what it does per
    record besides appending: a metadata wait, a future (resolved one by one on the ack) and
    Faust's wrapper. Like ``send``, a record joins the partition's batch that is still waiting
    for the sender, so a caller never waits for a produce request unless that batch is full,
    and the broker gets few, full batches (aiokafka's ``send_batch`` would wait for the
    partition's request in flight on every call).

    Reads aiokafka's accumulator (``_batches``, ``_append_batch``), as pinned in pyproject.toml.
    """
    await producer.client._wait_on_metadata(topic)
    accumulator = producer._message_accumulator
    placed: list[Placed] = []
    for key, value, headers in records:
        timeout_s = producer._request_timeout_ms / 1000  # per record, as in aiokafka's send
        chosen = partition
        if chosen is None:
            chosen = producer._partition(topic, None, key, value, key, value)
        tp = TopicPartition(topic, chosen)
        while True:
            if accumulator._closed:
                raise ProducerClosed()
            if accumulator._exception is not None:
                raise copy.copy(accumulator._exception)
            pending = accumulator._batches.get(tp)
            if pending:
                batch = pending[-1]
            else:  # wakes the sender
                batch = accumulator._append_batch(producer.create_batch(), tp)
            # The builder numbers the batch's records from 0, and an empty one takes any record.
            added = batch._builder.append(timestamp=None, key=key, value=value, headers=headers)
            if added is not None:
                placed.append((batch.future, added.offset))
                break
            # Full: wait until the sender takes it (as aiokafka's send does).
            started = time.monotonic()
            await batch.wait_drain(timeout_s)
            timeout_s -= time.monotonic() - started
            if timeout_s <= 0:
                raise KafkaTimeoutError()
    return placed


async def send_batched_on(
    app: Any, topic: str, partition: int | None, records: Sequence[Record]
) -> list[Placed]:
    """:func:`send_batched` on a Faust app's producer (Faust wraps aiokafka's, batches unseen)."""
    return await send_batched(app.producer._ensure_producer(), topic, partition, records)
