"""The firing loop: forwards due jobs, then sleeps until the next due time.

Not a fixed-interval ``@app.timer``: it wakes at the earliest due time of its active
partitions, or sooner when the agent schedules something earlier, so lateness is the time of
one pass, not a tick.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any, cast

from faust.types import TP

from app.errors import SettingsError
from app.runtime import active_partitions, engine
from app.service import app, freeze_watch, settings
from app.times import now_ms
from app.topics import dead_letter_topic

__all__ = ["fire_due_jobs", "fresh_membership", "hand_over"]

log = logging.getLogger(__name__)

#: How often to look while the worker is rebalancing or recovering tables.
_NOT_READY_POLL_S = 0.05


def _partition_mismatch() -> str | None:
    """Why the command topics cannot be used as configured, if they cannot."""
    for topic in (settings.ingest_topic, settings.fired_topic):
        found = app.consumer.topic_partitions(topic)
        if found is not None and found != settings.partitions:
            return (
                f"topic {topic} has {found} partitions but DELAYQ_PARTITIONS is "
                f"{settings.partitions}: jobs would be read by workers that do not hold them"
            )
    return None


async def hand_over(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
    """Before partitions move: end the running pass and get its removal records to the broker.

    The next owner fences each partition it takes (see app/handover.py), so it applies these
    removals before it fires, instead of forwarding the same jobs again.
    """
    revoked: set[TP] = args[0]  # Faust sends (app, revoked)
    await engine.quiesce({tp.partition for tp in revoked if tp.topic == settings.ingest_topic})
    await app.producer.flush()


# mypy cannot match an async receiver against mode's union of receiver types.
app.on_partitions_revoked.connect(cast(Any, hand_over))


async def fresh_membership(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
    """A new assignment: the group's view is fresh, an earlier stand-still is past (freeze.py);
    partition states made since the revocation belong to no assignment (app/handover.py)."""
    freeze_watch.assigned()
    engine.assigned()


app.on_partitions_assigned.connect(cast(Any, fresh_membership))


def _freeze_startup_objects() -> None:
    """Keep the start-up heap out of the garbage collector's full passes.

    Faust, aiokafka and their modules leave ~100k long-lived objects; a full collection walked
    them all every few seconds under load (50-100 ms with the loop stopped: every job due
    meanwhile was late by that much). Frozen objects are never collected, and never garbage.
    """
    gc.collect()
    gc.freeze()
    log.info("froze %d start-up objects out of garbage collection", gc.get_freeze_count())


@app.task
async def fire_due_jobs() -> None:
    """Forward due jobs of this worker's active partitions, for as long as the worker runs."""
    await dead_letter_topic.maybe_declare()
    checked = False
    while not app.should_stop:
        if app.rebalancing or not app.tables.actives_ready:
            await asyncio.sleep(_NOT_READY_POLL_S)
            continue
        if not checked:
            checked = True
            mismatch = _partition_mismatch()
            if mismatch:
                log.critical("delayq: %s", mismatch)
                await app.crash(SettingsError(mismatch))
                return
            _freeze_startup_objects()
        active = active_partitions()
        engine.sync_assignment(app.consumer_generation_id, active)
        try:
            await engine.send_fences(active, now_ms())
            wake = await engine.fire_due(now_ms(), active)
        except Exception:  # never let one bad pass stop the loop; the next pass retries
            log.exception("firing pass failed")
            wake = now_ms() + 1000
        await engine.sleep_until(wake)
