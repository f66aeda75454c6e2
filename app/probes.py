"""The ingest guard's probe loop: end offsets, and peeks at the commands not applied yet.

The guard's rules are in app/guard.py (steps 1-3); this Faust task asks the broker (step 2 and
the peek of step 3) for the partitions whose due jobs a firing pass held back, and reads back
what the stream has left undelivered for too long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from app.agents import catch_up
from app.moving import home_partition
from app.runtime import active_partitions, engine
from app.service import app, settings
from app.times import now_ms

__all__ = ["probe_ingest_ends"]

log = logging.getLogger(__name__)

#: The probe loop looks at least this often for probes the agent has not met.
_PROBE_IDLE_S = 0.5
#: A peek at the commands not applied yet gives up after this (their jobs wait for the agent).
_PEEK_TIMEOUT_S = 1.0
#: The consumer group's committed offsets are asked again after this (:class:`_Committed`).
_COMMITTED_TTL_S = 0.5
#: A probe unmet this long, with the agent's applied offset unchanged, is met by reading back.
_STALL_MS = 2_000


@app.task
async def probe_ingest_ends() -> None:
    """The ingest guard's probes (app/guard.py, step 2), for partitions holding due jobs back.

    Its own consumer (no group; paused but for a peek): Faust's runs in another thread, and a call
    into it waited for that thread's next fetch (~100 ms on the embedded broker).
    """
    # Two readers, so that the peek and the read of the other partitions take one round trip.
    consumer, inbound = (
        AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # an inbound read below the log start: from its start
            **settings.kafka_client_options(),
        )
        for _ in range(2)
    )
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, **settings.kafka_client_options()
    )
    await consumer.start()
    await inbound.start()
    await admin.start()
    committed = _Committed(admin)
    stalled: dict[int, tuple[int, int]] = {}  # partition -> (applied offset seen, since ms)
    try:
        while not app.should_stop:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(engine.probe_wanted.wait(), _PROBE_IDLE_S)
            engine.probe_wanted.clear()
            if app.rebalancing or not app.tables.actives_ready:
                continue
            try:
                await _probe(consumer, inbound, committed, active_partitions(), stalled)
            except Exception:  # the next round asks again
                log.exception("ingest guard probe failed")
                await asyncio.sleep(_PROBE_IDLE_S)
                engine.probe_wanted.set()
    finally:
        await admin.close()
        await inbound.stop()
        await consumer.stop()


async def _probe(
    consumer: Any,
    inbound: Any,
    committed_offsets: _Committed,
    active: list[int],
    stalled: dict[int, tuple[int, int]],
) -> None:
    """Steps 2 and 3 of app/guard.py for the partitions holding due jobs back."""
    every = {TopicPartition(settings.ingest_topic, p) for p in range(settings.partitions)}
    for reader in (consumer, inbound):
        if reader.assignment() != every:  # paused but for a read
            reader.assign(list(every))
            reader.pause(*every)
    targets = engine.probe_targets(active, now_ms())
    if targets:
        epoch = engine.assignment_epoch  # a rebalance meanwhile voids it (app/guard.py)
        taken = now_ms()  # before the requests: the broker answers at or after it
        # Committed offsets first: the moves below them lie below the end offsets read next.
        committed = await committed_offsets.read()
        all_ends = {tp.partition: end for tp, end in (await consumer.end_offsets(every)).items()}
        ends = {partition: all_ends[partition] for partition in targets}
        starts = {partition: engine.applied_offset(partition) + 1 for partition in ends}
        unapplied = {p: (starts[p], end) for p, end in ends.items() if starts[p] < end}
        ids, inbound_read = await asyncio.gather(
            _peek(consumer, unapplied), _read_inbound(inbound, active, committed, all_ends, epoch)
        )
        if engine.assignment_epoch != epoch:
            log.info("ingest guard probe begun before a rebalance: dropped, probing again")
        engine.observe_end_offsets(taken, ends, ids, inbound_read, committed, epoch)
        if not inbound_read or engine.assignment_epoch != epoch:
            engine.probe_wanted.set()  # the next probe reads on from where this one stopped
    await _meet_stalled_probes(active, stalled)


class _Committed:
    """The consumer group's committed offsets, asked of its coordinator (found once).

    Asked at most every ``_COMMITTED_TTL_S``: an older answer is a lower bound, as good for the
    guard (below it every command was moved) if it was read before the end offsets, and
    commits come every few seconds anyway. Saves a round trip on most probes.
    """

    def __init__(self, admin: Any) -> None:
        self._admin = admin
        self._coordinator: int | None = None
        self._offsets: dict[int, int] = {}
        self._read_at = -math.inf

    async def read(self) -> dict[int, int]:
        """The committed offset of every ingest partition (0 where none)."""
        if time.monotonic() - self._read_at < _COMMITTED_TTL_S:
            return self._offsets
        started = time.monotonic()
        self._offsets = await self._ask()
        self._read_at = started
        return self._offsets

    async def _ask(self) -> dict[int, int]:
        tps = [TopicPartition(settings.ingest_topic, p) for p in range(settings.partitions)]
        if self._coordinator is None:
            self._coordinator = await self._admin.find_coordinator(settings.app_id)
        try:
            offsets = await self._admin.list_consumer_group_offsets(
                settings.app_id, self._coordinator, tps
            )
        except Exception:
            self._coordinator = None  # moved, perhaps: found again next time
            raise
        committed = {tp.partition: 0 for tp in tps}
        for tp, meta in offsets.items():
            if tp.topic == settings.ingest_topic and meta.offset >= 0:
                committed[tp.partition] = meta.offset
        return committed


async def _read_inbound(
    consumer: Any, active: list[int], committed: dict[int, int], ends: dict[int, int], epoch: int
) -> bool:
    """Note the commands on other partitions for jobs at home here (app/guard.py, "Commands on
    other partitions"); whether every partition was read up to its end offset in time.
    ``epoch``: the assignment the probe began in (nothing is noted for another)."""
    engine.inbound_homes(active, epoch)
    homes = set(active)
    ranges = {}
    for source, end in ends.items():
        start = engine.inbound_start(source, committed[source])
        if start < end:
            ranges[TopicPartition(settings.ingest_topic, source)] = (start, end)
    if not ranges:
        return True
    reached = {tp: start for tp, (start, _end) in ranges.items()}
    try:
        for tp, (start, _end) in ranges.items():
            consumer.seek(tp, start)
        consumer.resume(*ranges)
        async with asyncio.timeout(_PEEK_TIMEOUT_S):
            while any(reached[tp] < end for tp, (_start, end) in ranges.items()):
                fetched = await consumer.getmany(*ranges, timeout_ms=_PEEK_TIMEOUT_S * 1000)
                for tp, records in fetched.items():
                    end = ranges[tp][1]
                    for record in records:
                        if record.offset >= end:
                            break
                        _note_inbound(record, tp.partition, homes, epoch)
                for tp, (_start, end) in ranges.items():  # past transaction markers too
                    reached[tp] = min(end, await consumer.position(tp))

    except TimeoutError:
        pass
    finally:
        consumer.pause(*ranges)
        for tp, offset in reached.items():
            engine.inbound_read_to(tp.partition, offset, epoch)
    return all(reached[tp] >= end for tp, (_start, end) in ranges.items())


def _note_inbound(record: Any, source: int, homes: set[int], epoch: int) -> None:
    # A worker's move is home already; a command elsewhere is moved, whatever its headers say.
    if not record.key:
        return
    home = home_partition(record.key, settings.partitions)
    if home != source and home in homes:
        engine.expect_move(home, record.key, source, record.offset, epoch)


async def _peek(
    consumer: Any, ranges: dict[int, tuple[int, int]]
) -> dict[int, frozenset[bytes] | None]:
    """The job ids of the ingest commands at ``start <= offset < end``, per partition.

    None for a partition whose commands cannot all be read in time or whose offsets have a
    hole (a record the broker skipped, or a transaction marker): its jobs wait for the agent.
    """
    if not ranges:
        return {}
    wanted = {TopicPartition(settings.ingest_topic, p): span for p, span in ranges.items()}
    ids: dict[TopicPartition, set[bytes]] = {tp: set() for tp in wanted}
    #: the next offset expected per partition; None once a hole was seen
    expected: dict[TopicPartition, int | None] = {tp: s for tp, (s, _e) in wanted.items()}
    try:
        for tp, (start, _end) in wanted.items():
            consumer.seek(tp, start)
        consumer.resume(*wanted)
        async with asyncio.timeout(_PEEK_TIMEOUT_S):
            while any(_short(expected[tp], end) for tp, (_start, end) in wanted.items()):
                fetched = await consumer.getmany(timeout_ms=_PEEK_TIMEOUT_S * 1000)
                for tp, records in fetched.items():
                    for record in records:
                        if record.offset >= wanted[tp][1] or expected[tp] is None:
                            break
                        if record.offset != expected[tp]:  # a hole: cannot tell
                            expected[tp] = None
                            break
                        expected[tp] = record.offset + 1
                        if record.key is not None:
                            ids[tp].add(record.key)
    except TimeoutError:
        pass
    finally:
        consumer.pause(*wanted)  # no fetching between probes
    return {
        tp.partition: None
        if expected[tp] is None or _short(expected[tp], end)
        else frozenset(ids[tp])
        for tp, (_start, end) in wanted.items()
    }


def _short(expected: int | None, end: int) -> bool:
    """Whether a peek still has offsets to read before ``end`` (not after a hole)."""
    return expected is not None and expected < end


async def _meet_stalled_probes(active: list[int], stalled: dict[int, tuple[int, int]]) -> None:
    """Read back what a probe waits for when the agent has not moved for ``_STALL_MS``.

    The stream can leave the last commands of a partition undelivered (app/gaps.py): with no
    later command to reveal the gap, the guard would hold the partition's due jobs for good.
    """
    now = now_ms()
    for partition in active:
        probe = engine.waiting_probe(partition)
        if probe is None:
            stalled.pop(partition, None)
            continue
        applied = engine.applied_offset(partition)
        seen, since = stalled.get(partition, (None, now))
        if seen != applied:
            stalled[partition] = (applied, now)
            continue
        if now - since < _STALL_MS or applied < 0:
            continue  # moving, or nothing applied yet: the stream's first record sets the start
        log.warning(
            "ingest partition %d: offsets %d-%d not delivered after %d ms; reading them back",
            partition,
            applied + 1,
            probe[1] - 1,
            now - since,
        )
        engine.stats.guard_read_back += await catch_up(partition, applied + 1, probe[1])
        stalled.pop(partition, None)
