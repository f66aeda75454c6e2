"""Records appended to aiokafka's record batches directly: one ack future per batch.

The engine's forwards and changelog records go through :func:`send_batched`. Per record,
aiokafka's ``send`` and Faust's wrapper around it were the largest cost of a forward in the
worker's profiles.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import KafkaTimeoutError, ProducerClosed
from aiokafka.structs import TopicPartition

import app.upstream  # noqa: F401  (checks the library versions first)

__all__ = [
    "Placed",
    "Record",
    "TimedRecord",
    "send_batched",
    "send_batched_on",
    "send_record_batch_on",
]


#: Key, value and headers of one record to produce (a list: aiokafka's batch builder, written
#: in Cython, takes no other sequence).
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]
#: Key, value, headers and timestamp (epoch ms; None: the producer's clock) of a record.
TimedRecord = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int | None]
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

    Replaces, per call, aiokafka/producer/producer.py ``AIOKafkaProducer.send`` (lines 426-510)
    and the loop of aiokafka/producer/message_accumulator.py ``MessageAccumulator.add_message``
    (lines 388-429). Measured at 2,000 jobs/s (``python -m bench --scenarios steady
    --contenders delayq --set steady_rate=2000 --set steady_s=30 --no-readme``, two runs each
    way): with aiokafka's public ``send`` per record, CPU per job 0.256 / 0.248 ms and lateness
    p99 7 / 20 ms; with this, 0.233 / 0.234 ms and 6 / 6 ms. aiokafka's public ``send_batch``
    serialised the passes (p50 17 ms).
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
    """:func:`send_batched` on a Faust app's producer (Faust wraps aiokafka's, batches unseen).

    Calls faust/transport/drivers/aiokafka.py ``Producer._ensure_producer``.
    """
    return await send_batched(app.producer._ensure_producer(), topic, partition, records)


async def send_record_batch_on(
    app: Any,
    topic: str,
    partition: int,
    records: Sequence[TimedRecord],
) -> tuple[asyncio.Future[Any], int]:
    """Send the first of ``records`` that fit in one record batch; its ack and their count.

    aiokafka's public ``create_batch`` and ``send_batch`` on a Faust app's producer (the one
    private call is Faust's ``_ensure_producer``, as in :func:`send_batched_on`). An empty
    batch takes any record, so at least one is sent.
    """
    producer = app.producer._ensure_producer()
    batch = producer.create_batch()
    count = 0
    for key, value, headers, timestamp_ms in records:
        if batch.append(key=key, value=value, timestamp=timestamp_ms, headers=headers) is None:
            break
        count += 1
    batch.close()
    ack: asyncio.Future[Any] = await producer.send_batch(batch, topic, partition=partition)
    return ack, count
