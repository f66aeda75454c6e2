"""Routing: the partition of a job id, and who owns it, from the assignor's metadata."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from app.api.models import error_reply
from app.api.routing import Local, Remote, Router, partition_of, same_worker
from app.errors import ApiError

#: Kafka's own test vectors for its murmur2 (Java client, ``UtilsTest.testMurmur2``).
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "java_hash"), JAVA_MURMUR2.items())
def test_the_partition_is_the_java_clients(key: bytes, java_hash: int) -> None:
    for partitions in (1, 4, 8, 12, 100):
        assert partition_of(key, partitions) == (java_hash & 0x7FFFFFFF) % partitions


def test_the_partition_is_aiokafkas_default_partitioner() -> None:
    partitioner = DefaultPartitioner()
    for i in range(2_000):
        key = f"job-{i}".encode()
        assert partition_of(key, 8) == partitioner(key, list(range(8)), list(range(8)))


def test_same_worker_compares_host_and_port() -> None:
    assert same_worker("http://127.0.0.1:6066", "http://127.0.0.1:6066/")
    assert not same_worker("http://127.0.0.1:6066", "http://127.0.0.1:6067")


CHANGELOG = "delayq-jobs-changelog"
SELF = "http://127.0.0.1:7001"
OTHER = "http://127.0.0.1:7002"


def fake_app(metadata: dict[str, Any], *, ready: bool = True) -> Any:
    """The parts of a Faust app the router reads (no Kafka involved)."""
    return SimpleNamespace(
        conf=SimpleNamespace(canonical_url=SELF),
        tables=SimpleNamespace(actives_ready=ready),
        rebalancing=False,
        assignor=SimpleNamespace(tables_metadata=lambda: metadata),
    )


def router(metadata: dict[str, Any], active: list[int], *, ready: bool = True) -> Router:
    return Router(fake_app(metadata, ready=ready), lambda: CHANGELOG, 4, lambda: active)


def job_in(partition: int) -> bytes:
    return next(
        f"j{i}".encode() for i in range(1000) if partition_of(f"j{i}".encode(), 4) == partition
    )


METADATA = {
    SELF: {CHANGELOG: [0, 1], "other-changelog": [2]},
    OTHER: {CHANGELOG: [2, 3]},
}


def test_locate_answers_locally_or_names_the_owner() -> None:
    r = router(METADATA, [0, 1])
    assert r.owners() == {0: SELF, 1: SELF, 2: OTHER, 3: OTHER}
    assert r.locate(job_in(1), routed=False) == Local(1)
    assert r.locate(job_in(3), routed=False) == Remote(3, OTHER)


def test_locate_is_503_with_retry_after_when_nobody_can_answer() -> None:
    cases = [
        (router(METADATA, [0, 1], ready=False), job_in(0), False),  # recovering
        (router(METADATA, [0, 1]), job_in(3), True),  # a routed request never hops twice
        (router({SELF: {CHANGELOG: [0, 1]}}, [0, 1]), job_in(2), False),  # owner unknown
        (router({SELF: {CHANGELOG: [2]}}, [0, 1]), job_in(2), False),  # metadata points at us
    ]
    for r, job_id, routed in cases:
        with pytest.raises(ApiError) as caught:
            r.locate(job_id, routed=routed)
        assert caught.value.status == 503
        assert error_reply(caught.value).headers["Retry-After"] == "1"


def test_collect_needs_every_partition_covered_exactly_once() -> None:
    async def local() -> dict[str, Any]:
        return {"active_partitions": [0, 1, 2, 3]}

    whole = router({SELF: {CHANGELOG: [0, 1, 2, 3]}}, [0, 1, 2, 3])
    assert asyncio.run(whole.collect("/stats", local)) == [{"active_partitions": [0, 1, 2, 3]}]
    partial = router({SELF: {CHANGELOG: [0, 1, 2]}}, [0, 1, 2])
    with pytest.raises(ApiError) as caught:
        asyncio.run(partial.collect("/stats", local))
    assert caught.value.status == 503
