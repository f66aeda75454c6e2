"""app.upstream.producer.send_batched against the embedded broker: order, offsets and partitioning.

The changelog's persisted offset is computed from what send_batched returns (the batch's first
offset plus the record's index), so it must name each record's real offset: one too high and a
restart would skip a changelog record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.embedded import EmbeddedBroker
from app.upstream.producer import Record, send_batched
from tests.support import Namespace, create_topics

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0


@pytest.fixture
async def producer(broker: EmbeddedBroker) -> AsyncIterator[AIOKafkaProducer]:
    # Small batches, so that the records below fill several of them.
    started = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks=-1, max_batch_size=2048)
    await started.start()
    yield started
    await started.stop()


async def _read_all(bootstrap: str, topic: str, partition: int, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records: list[Any] = []
        async with asyncio.timeout(TIMEOUT_S):
            while len(records) < count:
                fetched = await consumer.getmany(tp, timeout_ms=1000)
                records.extend(fetched.get(tp, []))
        return records
    finally:
        await consumer.stop()


async def test_records_keep_their_order_and_each_is_placed_at_its_real_offset(
    broker: EmbeddedBroker, producer: AIOKafkaProducer
) -> None:
    # Given a topic, and more records for one partition than one record batch holds
    topic = Namespace().target("batched")
    await create_topics(broker.bootstrap, [topic], 2)
    records: list[Record] = [
        (b"k%d" % i, b"v%d-" % i + b"x" * 100, [("n", b"%d" % i)]) for i in range(300)
    ]

    # When they are sent in two calls, the second while the first may still wait for the sender
    first = await send_batched(producer, topic, 1, records[:150])
    second = await send_batched(producer, topic, 1, records[150:])
    await producer.flush()

    # Then the partition holds them in order, and each placement names the record's offset
    placed = [*first, *second]
    assert len({id(ack) for ack, _index in placed}) > 1, "expected several record batches"
    offsets = [(await ack).offset + index for ack, index in placed]
    stored = await _read_all(broker.bootstrap, topic, 1, len(records))
    assert [(r.offset, r.key, r.value) for r in stored] == [
        (offset, key, value) for offset, (key, value, _h) in zip(offsets, records, strict=True)
    ]
    assert [dict(r.headers)["n"] for r in stored] == [b"%d" % i for i in range(300)]


async def test_without_a_partition_each_record_goes_where_aiokafkas_send_puts_its_key(
    broker: EmbeddedBroker, producer: AIOKafkaProducer
) -> None:
    # Given two topics of 4 partitions and keyed records
    batched, plain = Namespace().target("batched"), Namespace().target("plain")
    await create_topics(broker.bootstrap, [batched, plain], 4)
    keys = [b"order-%d" % i for i in range(40)]

    # When they go to one topic through send_batched without a partition, and to the other
    # through aiokafka's own send
    placed = await send_batched(producer, batched, None, [(key, b"v", []) for key in keys])
    sent = [await producer.send(plain, b"v", key=key) for key in keys]
    await producer.flush()

    # Then each key landed in the same partition both ways (Kafka's key hash), and keys spread
    batched_partitions = [(await ack).partition for ack, _index in placed]
    assert batched_partitions == [(await ack).partition for ack in sent]
    assert len(set(batched_partitions)) > 1
