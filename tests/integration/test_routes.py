"""Fixed-delay routes: plain records on a source topic reach the target after the delay."""

from __future__ import annotations

import pytest

from tests.conftest import WorkerFactory
from tests.support import Kafka, Namespace, headers_of

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
