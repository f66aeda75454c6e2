"""Fixed-delay routes: plain records on a source topic reach the target after the delay."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

import pytest

from app.moving import home_partition
from tests.conftest import WorkerFactory
from tests.support import Kafka, Namespace, Worker, create_topics, headers_of, wait_for

pytestmark = pytest.mark.integration


async def test_a_plain_record_on_a_route_source_is_forwarded_after_the_route_delay(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    # Given a worker with a 1.5 s route from a legacy topic to the real one
    source = ns.target("orders-delay")
    start_worker(DELAYQ_ROUTES=f"{source}=1500ms:{ns.target()}")
    # When a producer that knows nothing of delayq writes a plain record there
    sent = await kafka.send(source, b"order-9", b"close it", [("trace", b"t9")])
    # Then it reaches the target 1.5 s after its timestamp, with its key, value and headers
    [record] = await kafka.collect([ns.target()], lambda rs: len(rs) >= 1)
    headers = headers_of(record)
    assert (record.key, record.value, headers["trace"]) == (b"order-9", b"close it", b"t9")
    assert int(headers["delayq-due-ms"]) == sent.timestamp + 1500
    assert record.timestamp >= sent.timestamp + 1500
    assert headers["delayq-job-id"] == f"route:{source}:{sent.partition}:{sent.offset}".encode()


async def test_a_route_job_is_found_at_its_home_partition_over_http(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    # Given a worker with an hour-long route, and a plain record on each partition of the source
    source = ns.target("reminders-delay")
    await create_topics(kafka.bootstrap, [source], ns.partitions)
    worker = start_worker(DELAYQ_ROUTES=f"{source}=1h:{ns.target()}")
    sent = [await kafka.send(source, b"k%d" % p, b"v", partition=p) for p in range(ns.partitions)]
    # When each job is asked for by its id over HTTP
    for record in sent:
        job_id = f"route:{source}:{record.partition}:{record.offset}"

        def found(job_id: str = job_id) -> bool:
            return get_json(worker, f"/jobs/{quote(job_id, safe='')}") is not None

        wait_for(found, f"GET /jobs/{job_id}")
        # Then it is pending in its home partition
        job = get_json(worker, f"/jobs/{quote(job_id, safe='')}")
        assert job is not None
        assert job["partition"] == home_partition(job_id.encode(), ns.partitions)


def get_json(worker: Worker, path: str) -> dict[str, Any] | None:
    """The JSON answer of ``GET path``; None for a 404."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}{path}") as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
