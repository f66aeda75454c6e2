"""The one agent that changes the jobs table, and the fixed-delay routes that feed it.

Concurrency 1: Faust may commit past unprocessed messages with more (upstream #606), and one
writer per partition is what makes replace, cancel and removal race-free. What a batch does is
:func:`app.ingest.apply_batch`; this module wires it to the worker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from faust.types import TP

from app.gaps import Record, read_range
from app.ingest import IngestContext, apply_batch, delay_base_ms, message_headers, no_release
from app.jobs import Header
from app.names import HEADER_DUE_MS, HEADER_KEY, HEADER_PREFIX, HEADER_TARGET
from app.runtime import active_partitions, engine
from app.service import app, settings
from app.settings import Route
from app.times import MAX_DUE_MS
from app.topics import commands_channel, ingest_topic, raw_topic_options
from app.upstream.consumer import acknowledge_gap

__all__ = ["BATCH_MAX", "BATCH_WINDOW_S", "apply_commands", "catch_up", "worker_ingest"]

log = logging.getLogger(__name__)

#: Commands applied together: one changelog hand-off and one replay mark per partition.
#: Bounded because a batch runs without yielding, and the firing loop shares the thread.
BATCH_MAX = 500
#: How long a batch waits to fill; a lone command is applied after at most this.
BATCH_WINDOW_S = 0.005
#: A batch that failed is tried again after this, doubling up to _RETRY_MAX_S.
_RETRY_BASE_S = 0.5
_RETRY_MAX_S = 30.0
#: One batch at a time: the agent's, or a catch-up of the ingest guard (:func:`catch_up`).
_applying = asyncio.Lock()


async def _read_skipped(partition: int, start: int, stop: int) -> list[Record]:
    return await read_range(settings, settings.ingest_topic, partition, start, stop)


async def _acknowledge_skipped(partition: int, start: int, last: int) -> None:
    await acknowledge_gap(app.consumer, settings.ingest_topic, partition, start, last)


def _hold(message: Any) -> Callable[[], None]:
    """Keep Faust from committing past ``message`` until the returned callable runs.

    One more reference on Faust's message (the stream's ack when the batch ends no longer makes
    it the last), and a hold on its offset: Faust alone would commit past it if it is the
    first record not acknowledged (app/upstream/consumer.py). Read-back records (app/gaps.py)
    are held by their range instead.
    """
    incref = getattr(message, "incref", None)
    if incref is None:
        return no_release
    incref()
    unhold = _hold_offset(message.partition, message.offset)

    def release() -> None:
        message.ack(app.consumer)
        unhold()

    return release


def _hold_offset(partition: int, offset: int) -> Callable[[], None]:
    """Commit no ingest offset at or past ``offset`` of ``partition`` until the callable runs."""
    hold_offset = getattr(app.consumer, "hold_offset", None)
    if hold_offset is None:  # another transport (the tests' stub)
        return no_release
    release: Callable[[], None] = hold_offset(TP(settings.ingest_topic, partition), offset)
    return release


#: The worker's wiring of the ingest step.
worker_ingest = IngestContext(
    engine=engine,
    ingest_topic=settings.ingest_topic,
    fired_topic=settings.fired_topic,
    forbidden_targets=settings.internal_topics(),
    max_clock_skew_ms=settings.max_clock_skew_ms,
    owned_partitions=active_partitions,
    read_skipped=_read_skipped,
    acknowledge_skipped=_acknowledge_skipped,
    hold=_hold,
    hold_offset=_hold_offset,
    partitions=settings.partitions,
)


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
            async with _applying:
                await apply_batch(worker_ingest, messages)
            return
        except Exception:
            delay = min(_RETRY_BASE_S * 2 ** (attempt - 1), _RETRY_MAX_S)
            log.exception(
                "applying a batch of %d records failed (attempt %d)", len(messages), attempt
            )
            await asyncio.sleep(delay)


async def catch_up(partition: int, start: int, stop: int) -> int:
    """Read and apply the ingest commands at ``start <= offset < stop``; how many there were.

    For the ingest guard (app/probes.py), when the stream has not delivered commands below an
    end offset it observed: the stream delivers them later, and they are skipped as replays.
    """
    records = await _read_skipped(partition, start, stop)
    if records:
        await _apply_until_done(records)
    return len(records)


def _route_record(route: Route, message: Any) -> tuple[bytes, list[Header]]:
    """The ingest command for a record on a route's source topic: its job id and headers.

    The job id names the source record, so a re-delivered record replaces its own job instead
    of scheduling a second one.
    """
    job_id = f"route:{message.topic}:{message.partition}:{message.offset}".encode()
    due_ms = delay_base_ms(worker_ingest, message.timestamp) + route.delay_ms
    headers = [(n, v) for n, v in message_headers(message) if not n.startswith(HEADER_PREFIX)]
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
    routes_channel: Any = app.topic(*_routes, internal=True, **raw_topic_options)

    @app.agent(routes_channel, concurrency=1)
    async def route_fixed_delays(stream: Any) -> None:
        """Turn records on fixed-delay source topics into ingest commands (no headers needed)."""
        async for event in stream.events():
            message = event.message
            job_id, headers = _route_record(_routes[message.topic], message)
            # Attached to the event: published before this offset is committed.
            await ingest_topic.send(key=job_id, value=message.value, headers=headers)
