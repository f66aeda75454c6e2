"""Reading back ingest commands that Faust skipped.

Faust 0.15.3 can drop records it already fetched when a rebalance seeks a partition back to its
committed offset while an older fetch is still being drained (``Consumer._drain_messages`` keeps
advancing its read offset for records it does not deliver, then drops the re-fetched ones as
already read), and later commits past them. Seen in ``make chaos``: 411 commands of one partition
never applied after a worker joined.

The agent knows the next offset it expects per partition (the replay mark + 1). When a command
arrives beyond it, the offsets in between are read here with a plain consumer and applied first,
before the batch is acknowledged, so nothing is committed past an unapplied command. Offsets with
no record (transaction markers, retention) are simply absent from the answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from app.settings import Settings

__all__ = ["Record", "read_range", "read_raw_range"]

#: The most records asked for at once.
_MAX_RECORDS = 5_000


@dataclass(frozen=True, slots=True)
class Record:
    """An ingest record as the agent reads it (Faust's Message attributes; timestamp in s)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: float | None


async def read_range(
    settings: Settings, topic: str, partition: int, start: int, stop: int, timeout_s: float = 30.0
) -> list[Record]:
    """The records at offsets ``start <= offset < stop`` of one partition, in offset order.

    Raises TimeoutError if the broker does not hand them over in ``timeout_s``.
    """
    options = {"bootstrap_servers": settings.bootstrap_servers, **settings.kafka_client_options()}
    raw = await read_raw_range(options, topic, partition, start, stop, timeout_s)
    return [_record(r) for r in raw]


async def read_raw_range(
    consumer_options: dict[str, Any],
    topic: str,
    partition: int,
    start: int,
    stop: int,
    timeout_s: float = 30.0,
) -> list[Any]:
    """:func:`read_range` as aiokafka's ``ConsumerRecord`` objects, for any client options."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # offsets gone by retention: from the first one left
        fetch_max_wait_ms=100,
        **consumer_options,
    )
    tp = TopicPartition(topic, partition)
    found: list[Any] = []
    async with asyncio.timeout(timeout_s):
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            while await consumer.position(tp) < stop:
                fetched = await consumer.getmany(tp, timeout_ms=500, max_records=_MAX_RECORDS)
                found.extend(r for r in fetched.get(tp, ()) if r.offset < stop)
        finally:
            await consumer.stop()
    return found


def _record(raw: Any) -> Record:
    timestamp = raw.timestamp / 1000 if raw.timestamp is not None and raw.timestamp >= 0 else None
    return Record(
        raw.topic,
        raw.partition,
        raw.offset,
        raw.key,
        raw.value,
        list(raw.headers or ()),
        timestamp,
    )
