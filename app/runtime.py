"""The worker's one :class:`Engine`, wired to the jobs table and the app's producer."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

from app.engine import Engine, EngineConfig
from app.jobs_table import jobs_store, jobs_table
from app.service import app, freeze_watch, settings
from app.upstream.producer import (
    Placed,
    Record,
    TimedRecord,
    send_batched_on,
    send_record_batch_on,
)

__all__ = ["active_partitions", "engine"]


class _AppProducer:
    """Faust's producer, looked up at send time (Faust creates it lazily); no write after a
    freeze past the session timeout (app/freeze.py)."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> Awaitable[Any]:
        freeze_watch.check()
        fut: Awaitable[Any] = await app.producer.send(
            topic, key, value, partition, timestamp, headers
        )
        return fut

    async def send_many(
        self, topic: str, partition: int | None, records: Sequence[Record]
    ) -> list[Placed]:
        freeze_watch.check()
        return await send_batched_on(app, topic, partition, records)

    async def send_record_batch(
        self, topic: str, partition: int, records: Sequence[TimedRecord]
    ) -> tuple[Awaitable[Any], int]:
        freeze_watch.check()
        return await send_record_batch_on(app, topic, partition, records)


engine = Engine(
    jobs_store,
    _AppProducer(),
    EngineConfig(
        fired_topic=settings.fired_topic,
        dead_letter_topic=settings.dead_letter_topic,
        fire_batch_max=settings.fire_batch_max,
        forward_timeout_s=settings.forward_timeout_s,
        forward_attempts=settings.forward_attempts,
        forward_retry_backoff_ms=settings.forward_retry_backoff_ms,
        ack_timeout_ms=int(settings.ack_timeout_s * 1000),
        max_forward_bytes=settings.max_forward_bytes,
        ingest_guard=settings.ingest_guard,
    ),
)


def active_partitions() -> list[int]:
    """Partitions of the jobs table this worker owns as active (not standby), sorted."""
    changelog = jobs_table.changelog_topic.get_topic_name()
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == changelog)
