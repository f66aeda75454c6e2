"""The run's embedded broker and the few admin calls the bench needs.

The broker is :class:`app.embedded.EmbeddedBroker` on a free loopback port (never 9092), in its
own process group, stopped by PID. Tansu keeps everything in memory, so a broker starts empty and
leaves nothing behind; the run starts a new one for every contender session
(:meth:`bench.scenarios.Runner.renew_broker`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.embedded import EmbeddedBroker

__all__ = ["Broker", "CommittedOffsets", "create_topics"]


class Broker(EmbeddedBroker):
    """One Tansu process, on a free port on 127.0.0.1."""


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    """Create the topics that do not exist yet (before anyone produces to them)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(name, partitions, 1) for name in names if name not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


class CommittedOffsets:
    """Reads a consumer group's committed offsets without joining the group.

    A consumer with the group's id and a manual assignment asks the group coordinator
    (OffsetFetch) like the group's own members do. (aiokafka's admin client cannot: its
    OffsetFetch request version gets a reply from Tansu it fails to parse.)
    """

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )

    async def start(self) -> CommittedOffsets:
        await self._consumer.start()
        self._consumer.assign(self.tps)
        return self

    async def stop(self) -> None:
        await self._consumer.stop()

    async def total(self) -> int:
        """Sum of the committed offsets over the topic's partitions (0 where none)."""
        offsets = await asyncio.gather(*(self._consumer.committed(tp) for tp in self.tps))
        return sum(offset or 0 for offset in offsets)
