"""Standby copies of the jobs table: which this worker keeps, and which partitions lack some.

A partition without its configured standby copies still works; only its fail-over is slow (the
worker taking it over restores it from the changelog first). So a shortfall is a warning in
``GET /health`` and on the dashboard, never a reason to answer 503.

Two views of the shortfall, each from what its caller has at hand:

- :func:`assignment_standbys`: this worker's view, from the last assignment (no request to any
  other worker): Faust gives each partition ``min(configured, workers - 1)`` standby copies, the
  same number for every partition, so the member count of the assignment says it;
- the dashboard counts the standby partitions every worker reports (``app.dashboard.cluster``),
  which also sees a worker that stopped answering before the group noticed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from faust.types import TP

from app.jobs_table import jobs_table
from app.ranges import ranges_text
from app.service import app, settings

__all__ = [
    "assignment_standbys",
    "standby_counts",
    "standby_lag",
    "standby_partitions",
    "standby_warning",
]


def standby_partitions() -> list[int]:
    """Partitions of the jobs table this worker keeps as a standby replica, sorted."""
    changelog = jobs_table.changelog_topic.get_topic_name()
    return sorted(tp.partition for tp in app.assignor.assigned_standbys() if tp.topic == changelog)


def assignment_standbys() -> tuple[dict[int, int], int]:
    """``({partition: standby copies}, workers)`` as the last assignment has them."""
    workers = len(app.assignor.tables_metadata())
    copies = max(min(settings.standby_replicas, workers - 1), 0)
    return dict.fromkeys(range(settings.partitions), copies), workers


def standby_counts(reported: Iterable[Sequence[int]], partitions: int) -> dict[int, int]:
    """``{partition: standby copies}`` from each worker's list of standby partitions."""
    counts = dict.fromkeys(range(partitions), 0)
    for standbys in reported:
        for partition in standbys:
            if partition in counts:
                counts[partition] += 1
    return counts


def standby_warning(replicas: int, copies: Mapping[int, int], workers: int) -> str | None:
    """The warning for partitions with fewer standby copies than ``replicas``; None if none.

    ``copies`` maps each partition to its standby copies; ``workers`` is how many there are.
    """
    without = [p for p, n in copies.items() if n == 0]
    fewer = [p for p, n in copies.items() if 0 < n < replicas]
    if replicas == 0 or not (without or fewer):
        return None
    parts = [f"standby replicas configured: {replicas}"]
    if without:
        parts.append(f"partitions without a standby: {ranges_text(without)}")
    if fewer:
        parts.append(f"partitions with fewer standbys: {ranges_text(fewer)}")
    text = ", ".join(parts) + " — fail-over will restore them from the changelog"
    if workers <= 1:
        text += " (one worker: start another, or set DELAYQ_STANDBY_REPLICAS=0)"
    return text


async def standby_lag(timeout: float = 2.0) -> dict[int, int] | None:
    """Per standby partition of the jobs table: changelog records its copy has not read yet.

    End offset (asked from the broker now: a fetch-response highwater goes stale when a
    partition stops being fetched) minus the offset Faust's standby read last. Records read are
    applied at the latest when the partition becomes active (in bulk), so 0 means a fail-over
    has nothing left to replay. None if the broker did not answer within ``timeout``.
    """
    changelog = jobs_table.changelog_topic.get_topic_name()
    tps = [TP(changelog, partition) for partition in standby_partitions()]
    if not tps:
        return {}
    try:
        ends = await asyncio.wait_for(app.consumer.highwaters(*tps), timeout)
    except Exception:  # no answer: unknown, not zero
        return None
    tables: Any = app.tables  # the TableManager's type lacks its (public) recovery service
    read = tables.recovery.standby_offsets
    lag: dict[int, int] = {}
    for tp in tps:
        end, last = ends.get(tp), read.get(tp)
        if end is not None:
            lag[tp.partition] = max(0, end - 1 - (-1 if last is None else last))
    return lag
