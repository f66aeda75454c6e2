"""The Tansu quirks that app.tansu_compat works around, shown against a live embedded broker.

The tests marked ``tansu_canary`` assert a quirk of the broker, not delayq's behaviour: each fails
once a Tansu upgrade fixes its quirk; then delete the matching workaround in app/tansu_compat.py
(and the test). The others test the workarounds, and what they rely on the broker for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.errors import KafkaError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.offset import OffsetRequest

from app import tansu_compat
from app.embedded import EmbeddedBroker, free_port

pytestmark = pytest.mark.integration
#: Asserts a quirk of the embedded broker (see the module's docstring).
CANARY = pytest.mark.tansu_canary

TOPIC = "tansu-quirks"
BATCHES = 3
RECORDS_PER_BATCH = 5
TRUE_END = BATCHES * RECORDS_PER_BATCH  # 15: the high watermark of partition 0
NEWEST_BATCH_BASE = TRUE_END - RECORDS_PER_BATCH  # 10
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def quirks_broker() -> Iterator[EmbeddedBroker]:
    """A Tansu of our own (not the session broker): fresh, with only this module's topic."""
    with EmbeddedBroker() as embedded:
        yield embedded


@pytest.fixture(scope="module")
def batches_written(quirks_broker: EmbeddedBroker) -> str:
    """Partition 0 of TOPIC holds BATCHES record batches of RECORDS_PER_BATCH records each;
    partition 1 is empty."""

    async def write() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=quirks_broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(TOPIC, num_partitions=2, replication_factor=1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=quirks_broker.bootstrap)
        await producer.start()
        try:
            for b in range(BATCHES):
                batch = producer.create_batch()
                for r in range(RECORDS_PER_BATCH):
                    assert batch.append(key=None, value=f"{b}-{r}".encode(), timestamp=None)
                batch.close()
                delivered = await producer.send_batch(batch, TOPIC, partition=0)
                await asyncio.wait_for(delivered, TIMEOUT)
        finally:
            await producer.stop()

    asyncio.run(write())
    return TOPIC


@pytest.fixture
async def consumer(quirks_broker: EmbeddedBroker, batches_written: str) -> AsyncIterator[Any]:
    client = AIOKafkaConsumer(bootstrap_servers=quirks_broker.bootstrap, request_timeout_ms=30_000)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


@pytest.fixture
def unpatched(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiokafka as shipped, even if tansu_compat.install() already ran in this process."""
    if tansu_compat._original is not None:
        monkeypatch.setattr(Fetcher, "_proc_offset_request", tansu_compat._original)


P0 = TopicPartition(TOPIC, 0)
P1 = TopicPartition(TOPIC, 1)


async def _leader(consumer: Any, tp: TopicPartition) -> int:
    await consumer._client.force_metadata_update()
    node: int | None = consumer._client.cluster.leader_for_partition(tp)
    assert node is not None
    return node


# --- quirk 2: ListOffsets(LATEST) --------------------------------------------------------------


@CANARY
async def test_list_offsets_latest_is_base_of_newest_batch_plus_one(consumer: Any) -> None:
    """The raw ListOffsets request, whatever is patched: Tansu still answers wrongly."""
    node = await _leader(consumer, P0)
    response = await consumer._client.send(node, OffsetRequest(-1, 0, [(TOPIC, [(0, -1)])]))
    [(_, [(partition, error_code, *_, offset)])] = response.topics
    assert (partition, error_code) == (0, 0)
    assert offset == NEWEST_BATCH_BASE + 1 != TRUE_END, "Tansu fixed ListOffsets? see module doc"


async def test_fetch_high_watermark_is_correct(consumer: Any) -> None:
    """What the workaround relies on (with max_wait_ms > 0: 0 gets no partitions back)."""
    node = await _leader(consumer, P0)
    request = FetchRequest(100, 1, 1, 0, [(TOPIC, [(0, 0, 1), (1, 0, 1)])])
    response = await consumer._client.send(node, request)
    highwaters = {p: (err, hw) for _, parts in response.topics for p, err, hw, *_ in parts}
    assert highwaters == {0: (0, TRUE_END), 1: (0, 0)}


async def test_fetch_past_the_end_answers_high_watermark_and_log_start(consumer: Any) -> None:
    """What the workaround for quirk 6 relies on: no error, and both offsets it looks up."""
    node = await _leader(consumer, P0)
    far = tansu_compat._PAST_THE_END
    request = FetchRequest(10, 1, 1, 0, [(TOPIC, [(0, far, 1), (1, far, 1)])])
    response = await consumer._client.send(node, request)
    assert response.API_VERSION >= 5  # carries log_start_offset
    answers = {p: (err, hw, rest[1]) for _, parts in response.topics for p, err, hw, *rest in parts}
    assert answers == {0: (0, TRUE_END, 0), 1: (0, 0, 0)}


@CANARY
async def test_unpatched_end_offsets_miss_the_newest_batch(unpatched: None, consumer: Any) -> None:
    end = await consumer.end_offsets([P0, P1])
    assert end[P0] < TRUE_END, "Tansu fixed ListOffsets? see module doc"
    assert end == {P0: NEWEST_BATCH_BASE + 1, P1: 0}


async def test_install_corrects_end_offsets(consumer: Any) -> None:
    tansu_compat.install()
    patched = Fetcher._proc_offset_request
    tansu_compat.install()  # idempotent
    assert Fetcher._proc_offset_request is patched
    assert tansu_compat._original is not patched

    assert await consumer.end_offsets([P0, P1]) == {P0: TRUE_END, P1: 0}
    assert await consumer.end_offsets([P0]) == {P0: TRUE_END}
    assert await consumer.end_offsets([P1]) == {P1: 0}
    assert await consumer.beginning_offsets([P0, P1]) == {P0: 0, P1: 0}
    consumer.assign([P0])
    await consumer.seek_to_end(P0)
    assert await consumer.position(P0) == TRUE_END
    await consumer.seek_to_beginning(P0)
    assert await consumer.position(P0) == 0


async def test_install_leaves_lookups_by_timestamp_to_list_offsets(consumer: Any) -> None:
    tansu_compat.install()
    found = await consumer.offsets_for_times({P0: 0})
    assert found[P0] is not None and found[P0].offset == 0


# --- detection ----------------------------------------------------------------------------------


def test_is_tansu(quirks_broker: EmbeddedBroker) -> None:
    assert tansu_compat.is_tansu(quirks_broker.bootstrap)
    assert tansu_compat.is_tansu(quirks_broker.url)


async def test_is_tansu_from_a_running_loop(quirks_broker: EmbeddedBroker) -> None:
    assert tansu_compat.is_tansu(quirks_broker.bootstrap)


def test_is_tansu_false_for_a_closed_port() -> None:
    started = time.monotonic()
    assert not tansu_compat.is_tansu(f"127.0.0.1:{free_port()}", timeout=TIMEOUT)
    assert time.monotonic() - started < TIMEOUT  # refused at once, not timed out


# --- quirk 4: no transactions / idempotence -----------------------------------------------------


@CANARY
async def test_idempotent_producer_fails(
    quirks_broker: EmbeddedBroker, batches_written: str
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=quirks_broker.bootstrap, enable_idempotence=True)
    try:
        with pytest.raises(KafkaError):  # InitProducerId v0 -> UnknownError (Tansu wants v3+)
            await asyncio.wait_for(producer.start(), TIMEOUT)
            await asyncio.wait_for(producer.send_and_wait(TOPIC, b"x", partition=1), TIMEOUT)
    finally:
        await producer.stop()


@CANARY
async def test_join_is_held_for_half_the_session_timeout(quirks_broker: EmbeddedBroker) -> None:
    """Quirk 1: why SESSION_TIMEOUT_S is 2 s against Tansu (a lower bound: no speed assumed)."""
    # Given a consumer with a 10 s session timeout
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=quirks_broker.bootstrap,
        group_id=f"join-{free_port()}",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )
    # When it joins its group
    started = time.monotonic()
    await consumer.start()
    try:
        await asyncio.wait_for(consumer.getmany(timeout_ms=100), TIMEOUT)
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        joined_after = time.monotonic() - started
    finally:
        await consumer.stop()
    # Then the join took at least half of it (Kafka holds a new group's first join for
    # group.initial.rebalance.delay.ms = 3 s, not for half the session timeout)
    assert joined_after >= 4.9


# --- quirk 5: a Fetch is held for half its max_wait_ms -----------------------------------------

HOLD_TOPIC = "tansu-fetch-hold"
HOLD_MS = 2_000


@CANARY
async def test_fetch_is_held_for_max_wait_even_when_a_record_arrives(
    quirks_broker: EmbeddedBroker, consumer: Any
) -> None:
    """Kafka answers once min_bytes arrived; Tansu not before half of max_wait (a lower bound)."""
    # Given a topic whose partition 0 holds one record
    producer = AIOKafkaProducer(bootstrap_servers=quirks_broker.bootstrap)
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(HOLD_TOPIC, b"first", partition=0), TIMEOUT)
        node = await _leader(consumer, TopicPartition(HOLD_TOPIC, 0))
        # When a Fetch from offset 1 (min_bytes=1, max_wait 2 s) is pending and a record arrives
        request = FetchRequest(HOLD_MS, 1, 1 << 20, 0, [(HOLD_TOPIC, [(0, 1, 1 << 20)])])
        started = time.monotonic()
        fetch = asyncio.ensure_future(consumer._client.send(node, request))
        await asyncio.sleep(0.1)
        await asyncio.wait_for(producer.send_and_wait(HOLD_TOPIC, b"second", partition=0), TIMEOUT)
        response = await asyncio.wait_for(fetch, TIMEOUT)
        answered_after = time.monotonic() - started
    finally:
        await producer.stop()
    # Then the answer has the record but came only after half of max_wait
    [(_, [(_partition, error_code, highwater, *_)])] = response.topics
    assert (error_code, highwater) == (0, 2)
    assert answered_after >= HOLD_MS / 1000 / 2 * 0.95, "Tansu answers at once now? see doc"


async def test_install_caps_the_fetch_wait_of_new_consumers() -> None:
    # Given the workarounds installed
    tansu_compat.install()
    for asked, expected in [(1500, tansu_compat.CONSUMER_FETCH_MAX_WAIT_MS), (5, 5)]:
        # When a consumer's fetcher is made with a fetch wait (Faust asks for 1500 ms)
        fetcher = Fetcher(
            AIOKafkaClient(bootstrap_servers="127.0.0.1:1"),
            SubscriptionState(),
            fetch_max_wait_ms=asked,
        )
        try:
            # Then its fetches wait at most the cap
            assert fetcher._fetch_max_wait_ms == expected
        finally:
            await fetcher.close()
