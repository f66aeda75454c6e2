"""The one agent that changes the jobs table: it applies ingest commands and removals.

Concurrency 1: Faust may commit past unprocessed messages with more (upstream #606), and one
writer per partition is what makes replace, cancel and removal race-free.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

from faust.types import TP

from app.commands import Cancel, parse_command
from app.errors import InvalidRecord
from app.gaps import read_range
from app.jobs import FENCE_PREFIX, Header, decode_fired
from app.names import (
    HEADER_DELAY_MS,
    HEADER_DUE_MS,
    HEADER_KEY,
    HEADER_PREFIX,
    HEADER_TARGET,
)
from app.runtime import active_partitions, engine
from app.service import app, settings
from app.settings import Route
from app.times import MAX_DUE_MS, now_ms
from app.topics import ingest_topic

__all__ = ["BATCH_MAX", "BATCH_WINDOW_S", "apply_batch", "apply_commands"]

log = logging.getLogger(__name__)

_FORBIDDEN_TARGETS = settings.internal_topics()

#: Commands applied together: one changelog hand-off and one replay mark per partition.
#: Bounded because a batch runs without yielding, and the firing loop shares the thread.
BATCH_MAX = 500
#: How long a batch waits to fill; a lone command is applied after at most this.
BATCH_WINDOW_S = 0.005
#: Commands applied between two looks at whether a pass is due (each takes ~0.1-0.3 ms).
_YIELD_EVERY = 16
#: A batch that failed is tried again after this, doubling up to _RETRY_MAX_S.
_RETRY_BASE_S = 0.5
_RETRY_MAX_S = 30.0

#: internal=True: Faust creates both topics with ``settings.partitions`` before subscribing
#: (a topic auto-created by the subscription would get the broker's default partition count).
commands_channel: Any = app.topic(
    settings.ingest_topic,
    settings.fired_topic,
    internal=True,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
)


def _delay_base_ms(timestamp_s: float | None) -> int:
    """What ``delayq-delay-ms`` counts from: the record's timestamp, within reason.

    A timestamp more than ``max_clock_skew_ms`` ahead of this worker's clock cannot be true (the
    producer's clock is ahead): the receipt time is used instead, and counted. An old timestamp
    is taken as it is: a backlog after downtime is old too, and its delays have run.
    """
    received = now_ms()
    if not timestamp_s or timestamp_s <= 0:
        return received
    timestamp_ms = round(timestamp_s * 1000)
    if timestamp_ms - received > settings.max_clock_skew_ms:
        engine.stats.clock_skew_corrected += 1
        return received
    return timestamp_ms


def _received_ms(timestamp_s: float | None) -> int:
    """When delayq received a command: its record's timestamp, never later than now.

    The record's timestamp, not the moment it is applied: the time a command waits in the
    ingest topic (a backlog, a restart) is delayq's own delay, and lateness must show it.
    """
    now = now_ms()
    if not timestamp_s or timestamp_s <= 0:
        return now
    return min(round(timestamp_s * 1000), now)


def _headers(message: Any) -> list[Header]:
    return [(str(name), value) for name, value in (message.headers or ())]


class _Batch:
    """What applying one batch of commands does besides table writes.

    The replay mark is written once per partition per batch (not per command), and dead
    letters are acknowledged before it, so a command at or below the mark is fully handled.
    """

    def __init__(self) -> None:
        #: partition -> highest ingest offset handled (read from the table once per batch)
        self._applied: dict[int, int] = {}
        self._marked: set[int] = set()
        #: partition -> (first, last, count) of the replayed commands skipped
        self._replays: dict[int, tuple[int, int, int]] = {}
        self.dead_letters: list[Awaitable[Any]] = []

    def last_applied(self, partition: int) -> int:
        applied = self._applied.get(partition)
        if applied is None:
            applied = self._applied[partition] = engine.applied_offset(partition)
        return applied

    def applied(self, partition: int, offset: int) -> None:
        self._applied[partition] = offset
        self._marked.add(partition)

    def replayed(self, partition: int, offset: int) -> None:
        first, _last, count = self._replays.get(partition, (offset, offset, 0))
        self._replays[partition] = (first, offset, count + 1)

    def finish(self) -> None:
        """Write the replay marks; log the replays skipped."""
        for partition in self._marked:
            engine.mark_applied(partition, self._applied[partition])
        for partition, (first, last, count) in self._replays.items():
            log.info(
                "ingest partition %d: %d commands at offsets %d-%d were applied before, skipped",
                partition,
                count,
                first,
                last,
            )


async def _apply_ingest(message: Any, batch: _Batch) -> None:
    """Apply one delivered ingest record: skip a replay, read back what the stream skipped."""
    last = batch.last_applied(message.partition)
    if message.offset <= last:  # delivered again after a crash: applied before
        engine.stats.replays_skipped += 1
        batch.replayed(message.partition, message.offset)
        return
    if last >= 0 and message.offset > last + 1:
        await _apply_skipped(message.partition, last + 1, message.offset, batch)
    await _apply_command(message, batch)


async def _apply_command(message: Any, batch: _Batch) -> None:
    """Schedule, replace or cancel as the record says, or dead-letter it with the reason."""
    headers = _headers(message)
    # Only a delay counts from the record's timestamp (and only then is skew corrected).
    uses_delay = any(name == HEADER_DELAY_MS for name, _value in headers)
    timestamp_ms = _delay_base_ms(message.timestamp) if uses_delay else now_ms()
    try:
        command = parse_command(
            message.key,
            message.value,
            headers,
            timestamp_ms=timestamp_ms,
            version=message.offset,
            forbidden_targets=_FORBIDDEN_TARGETS,
        )
    except InvalidRecord as exc:
        log.warning(
            "dead-lettering %s[%d]@%d: %s",
            message.topic,
            message.partition,
            message.offset,
            exc.reason,
        )
        ack = await engine.send_dead_letter(message.key, message.value, headers, exc.reason)
        batch.dead_letters.append(ack)
    else:
        if isinstance(command, Cancel):
            engine.cancel(message.partition, command.job_id)
        else:
            engine.schedule(message.partition, command, _received_ms(message.timestamp))
    batch.applied(message.partition, message.offset)


async def _apply_skipped(partition: int, start: int, stop: int, batch: _Batch) -> None:
    """Apply the commands at ``start <= offset < stop`` that Faust did not deliver (app/gaps.py)."""
    skipped = await read_range(settings, settings.ingest_topic, partition, start, stop)
    log.warning(
        "ingest partition %d: offsets %d-%d were not delivered; read back %d commands",
        partition,
        start,
        stop - 1,
        len(skipped),
    )
    engine.stats.gaps_read_back += len(skipped)
    for record in skipped:
        await _apply_command(record, batch)
    batch.applied(partition, stop - 1)
    # Faust never saw these offsets acknowledged and would not commit past them: tell it.
    consumer: Any = app.consumer
    await consumer._add_gap(TP(settings.ingest_topic, partition), start, stop - 1)


async def apply_batch(messages: Sequence[Any]) -> None:
    """Apply ingest commands and removals in order, then hand their changelog to the producer.

    Durability order (Faust commits the offsets only after this returns and acks the events):

    1. every command and removal is written to the partition's local database;
    2. the broker acknowledges the batch's dead letters;
    3. the replay mark (highest handled ingest offset) of each partition is recorded;
    4. the changelog records of 1 and 3 go to the producer, in write order (Faust flushes the
       producer before it commits); the local database gets the mark of 3 only once the broker
       acknowledged it (why: :meth:`app.engine.Engine.mark_applied`).
    """
    batch = _Batch()
    owned = set(active_partitions())
    for index, message in enumerate(messages):
        if index % _YIELD_EVERY == _YIELD_EVERY - 1:
            await engine.yield_to_due_pass()
        if message.partition not in owned:
            # Read before this worker lost the partition: its new owner applies it. Writing
            # it here would reopen the partition's database and write its changelog.
            engine.stats.not_owned_skipped += 1
            continue
        if message.topic == settings.fired_topic:
            if message.key is not None and message.key.startswith(FENCE_PREFIX):
                engine.fence_passed(message.partition, message.key)
            else:
                engine.remove_fired(message.partition, decode_fired(message.value or b""))
        else:
            await _apply_ingest(message, batch)
    if batch.dead_letters:
        await asyncio.gather(*batch.dead_letters)
    batch.finish()
    await engine.yield_to_due_pass()
    await engine.flush()


@app.agent(commands_channel, concurrency=1)
async def apply_commands(stream: Any) -> None:
    """Schedule, replace and cancel jobs; remove forwarded ones. In batches, for throughput."""
    async for events in stream.take_events(BATCH_MAX, within=BATCH_WINDOW_S):
        await _apply_until_done([event.message for event in events])


async def _apply_until_done(messages: Sequence[Any]) -> None:
    """Apply a batch, retrying on errors: a batch that raised would be acknowledged unapplied.

    Faust acks every event of a ``take_events`` batch when the agent moves on, also when it
    crashes. Applying a batch again is harmless: its replay mark is written only at the end, and
    every command it holds gives the same table state when applied twice.
    """
    for attempt in itertools.count(1):
        try:
            await apply_batch(messages)
            return
        except Exception:
            delay = min(_RETRY_BASE_S * 2 ** (attempt - 1), _RETRY_MAX_S)
            log.exception(
                "applying a batch of %d records failed (attempt %d)", len(messages), attempt
            )
            await asyncio.sleep(delay)


def _route_record(route: Route, message: Any) -> tuple[bytes, list[Header]]:
    """The ingest command for a record on a route's source topic: its job id and headers.

    The job id names the source record, so a re-delivered record replaces its own job instead
    of scheduling a second one.
    """
    job_id = f"route:{message.topic}:{message.partition}:{message.offset}".encode()
    due_ms = _delay_base_ms(message.timestamp) + route.delay_ms
    headers = [(n, v) for n, v in _headers(message) if not n.startswith(HEADER_PREFIX)]
    headers += [
        (HEADER_TARGET, route.target.encode()),
        (HEADER_DUE_MS, str(min(due_ms, MAX_DUE_MS)).encode()),
    ]
    if message.key is not None:
        headers.append((HEADER_KEY, message.key))
    return job_id, headers


if settings.parsed_routes:
    _routes = {route.source: route for route in settings.parsed_routes}
    #: internal=True: missing source topics are created, so legacy producers find them.
    routes_channel: Any = app.topic(
        *_routes,
        internal=True,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )

    @app.agent(routes_channel, concurrency=1)
    async def route_fixed_delays(stream: Any) -> None:
        """Turn records on fixed-delay source topics into ingest commands (no headers needed)."""
        async for event in stream.events():
            message = event.message
            job_id, headers = _route_record(_routes[message.topic], message)
            # Attached to the event: published before this offset is committed.
            await ingest_topic.send(key=job_id, value=message.value, headers=headers)
