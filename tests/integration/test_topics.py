"""The worker creates its topics with the configured partition count and refuses a mismatch."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from app.embedded import EmbeddedBroker
from tests.conftest import WorkerFactory
from tests.support import Namespace, Worker, create_topics, wait_for

pytestmark = pytest.mark.integration


async def partitions_of(bootstrap: str, topics: list[str]) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer.topics()
        return {t: len(consumer.partitions_for_topic(t) or ()) for t in topics}
    finally:
        await consumer.stop()


async def test_a_worker_creates_its_topics_with_the_configured_partitions(
    broker: EmbeddedBroker, ns: Namespace, start_worker: WorkerFactory
) -> None:
    # Given no topics yet, when a worker with 3 partitions starts
    ns.partitions = 3
    start_worker()
    # Then ingest, fired and dead-letter topics exist with 3 partitions each (the dead-letter
    # topic is declared by the firing task, which may finish just after the worker is ready)
    topics = [ns.ingest, ns.fired, ns.dead_letters]
    found: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while found != dict.fromkeys(topics, 3) and time.monotonic() < deadline:
        found = await partitions_of(broker.bootstrap, topics)
    assert found == dict.fromkeys(topics, 3)


async def test_a_worker_refuses_an_ingest_topic_with_another_partition_count(
    broker: EmbeddedBroker, ns: Namespace, tmp_path: Path
) -> None:
    # Given an ingest topic created elsewhere with 2 partitions
    await create_topics(broker.bootstrap, [ns.ingest], 2)
    # When a worker configured for 4 starts
    worker = Worker(broker.bootstrap, ns, tmp_path / "data", tmp_path / "worker.log").start()
    try:
        # Then it stops with an error naming the topic and the setting
        wait_for(lambda: worker.proc is not None and worker.proc.poll() is not None, "exit")
        assert worker.proc is not None and worker.proc.returncode != 0
        log = worker.log_since_start()
        assert f"topic {ns.ingest} has 2 partitions but DELAYQ_PARTITIONS is 4" in log
    finally:
        worker.stop()
