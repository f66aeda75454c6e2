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
from app.names import HEADER_ERROR
from app.runtime import engine
from app.service import app, settings
from app.times import now_ms
from app.topics import dead_letter_topic

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
    timestamp_ms = _delay_base_ms(message.timestamp)
    headers = _headers(message)
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
    if isinstance(command, Cancel):
        engine.cancel(message.partition, command.job_id)
    else:
        engine.schedule(message.partition, command)
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
