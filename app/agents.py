"""The one agent that changes the jobs table: it applies ingest commands and removals.

Concurrency 1: Faust may commit past unprocessed messages with more (upstream #606), and one
writer per partition is what makes replace, cancel and removal race-free.
"""

from __future__ import annotations

import logging
from typing import Any

from app.commands import Cancel, parse_command
from app.errors import InvalidRecord
from app.jobs import Header, decode_fired
from app.names import (
    HEADER_DELAY_MS,
    HEADER_DUE_MS,
    HEADER_ERROR,
    HEADER_KEY,
    HEADER_PREFIX,
    HEADER_TARGET,
)
from app.runtime import engine
from app.service import app, settings
from app.settings import Route
from app.times import MAX_DUE_MS, now_ms
from app.topics import dead_letter_topic, ingest_topic

__all__ = ["apply_commands"]

log = logging.getLogger(__name__)

_FORBIDDEN_TARGETS = settings.internal_topics()

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


def _headers(message: Any) -> list[Header]:
    return [(str(name), value) for name, value in (message.headers or ())]


async def _apply_ingest(message: Any) -> None:
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
        engine.stats.dead_lettered_now(message.key, exc.reason)
        # Attached to the event: Faust publishes it before committing this offset.
        await dead_letter_topic.send(
            key=message.key,
            value=message.value,
            headers=[*headers, (HEADER_ERROR, exc.reason.encode())],
        )
        return
    # Bad records are dead-lettered even on a replay (their dead letter is published only at
    # commit); valid ones are applied once.
    if engine.already_applied(message.partition, message.offset):
        return
    if isinstance(command, Cancel):
        engine.cancel(message.partition, command.job_id)
    else:
        engine.schedule(message.partition, command)
    engine.mark_applied(message.partition, message.offset)
    await engine.flush()


@app.agent(commands_channel, concurrency=1)
async def apply_commands(stream: Any) -> None:
    """Schedule, replace and cancel jobs; remove forwarded ones."""
    async for event in stream.events():
        message = event.message
        if message.topic == settings.fired_topic:
            engine.remove_fired(message.partition, decode_fired(message.value or b""))
            await engine.flush()
        else:
            await _apply_ingest(message)


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
