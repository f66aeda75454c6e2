"""When the broker acknowledged each command the load generator sent, by its ingest position.

The reconciler judges a forward of a cancelled or replaced schedule by when Kafka acknowledged
the cancel or replace (delayq promises that one acknowledged before the due time wins), so the
generator notes, for every command, the epoch ms by its own clock at which the produce future
resolved. The record timestamp (CreateTime) would not do: it is taken before the send, and the
broker may take seconds to acknowledge while it is paused or busy.

A chaos run sends a few hundred thousand commands: one small dict of offsets per partition
keeps that to a few tens of MB.
"""

from __future__ import annotations

from bisect import bisect_right

__all__ = ["AckTimes"]


class AckTimes:
    """(ingest partition, offset) -> epoch ms at which the broker acknowledged the record."""

    def __init__(self) -> None:
        self._by_partition: dict[int, dict[int, int]] = {}
        #: partition -> (its noted offsets in order, the earliest ack from each one on).
        self._suffix: dict[int, tuple[list[int], list[int]]] = {}

    def note(self, partition: int, offset: int, acked_ms: int) -> None:
        offsets = self._by_partition.get(partition)
        if offsets is None:
            offsets = self._by_partition[partition] = {}
        offsets[offset] = acked_ms
        self._suffix.pop(partition, None)

    def earliest_after(self, partition: int, offset: int) -> int | None:
        """The earliest acknowledgement of a record after ``offset`` in ``partition`` (None if
        none was noted). The record at ``offset`` was acknowledged by then: the broker stores a
        partition's records in offset order, and acknowledges one (acks=all) only once its
        high watermark is past it."""
        index = self._suffix.get(partition)
        if index is None:
            acked = self._by_partition.get(partition, {})
            order = sorted(acked)
            minima = [acked[o] for o in order]
            for i in range(len(minima) - 2, -1, -1):
                minima[i] = min(minima[i], minima[i + 1])
            index = self._suffix[partition] = (order, minima)
        order, minima = index
        at = bisect_right(order, offset)
        return minima[at] if at < len(order) else None

    def get(self, partition: int, offset: int) -> int | None:
        """The acknowledgement time, or None if the generator never saw it (or never sent it)."""
        offsets = self._by_partition.get(partition)
        return None if offsets is None else offsets.get(offset)

    def __len__(self) -> int:
        return sum(len(offsets) for offsets in self._by_partition.values())
