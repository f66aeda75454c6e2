"""Fixtures: one embedded broker per session; workers, namespaces and clients per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from app.embedded import EmbeddedBroker
from tests.support import Kafka, Namespace, Worker, create_topics


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def ns() -> Namespace:
    return Namespace()


@pytest.fixture
async def kafka(broker: EmbeddedBroker, ns: Namespace) -> AsyncIterator[Kafka]:
    # The ingest topic exists before anyone produces: auto-creation would give it 1 partition.
    await create_topics(broker.bootstrap, [ns.ingest, ns.fired], ns.partitions)
    client = Kafka(broker.bootstrap)
    await client.start()
    yield client
    await client.stop()


WorkerFactory = Callable[..., Worker]


@pytest.fixture
def start_worker(broker: EmbeddedBroker, ns: Namespace, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start a ready worker: ``start_worker(name="a", data_dir=None, **env)``."""
    workers: list[Worker] = []

    def start(name: str = "a", data_dir: Path | None = None, **env: str) -> Worker:
        worker = Worker(
            broker.bootstrap,
            ns,
            data_dir or tmp_path / f"data-{name}",
            tmp_path / f"worker-{name}.log",
        )
        workers.append(worker)
        return worker.start(env).wait_ready()

    yield start
    for worker in workers:
        worker.stop()
