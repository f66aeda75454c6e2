"""Who won: the outcome of each cancel command, for a caller that waits for it.

``DELETE /jobs/{id}?wait=true`` writes a cancel, then waits on the partition's owner until the
agent has applied that very record (its ingest offset), and answers with what applying it found:

- ``cancelled``: the job was pending; it is gone and will not be forwarded;
- ``too_late``: the job was already forwarded, or on its way (sent, acknowledgement pending):
  with its due time and when it was sent;
- ``unknown``: no such job was pending, and this worker forwarded none recently.

Only the last :data:`KEPT` outcomes and forwards are remembered (memory is bounded), and only by
the worker that applied them: after a restart or a move, an older forward reads as ``unknown``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

__all__ = ["KEPT", "CancelOutcome", "Outcomes"]

#: Outcomes and recent forwards remembered (each a few hundred bytes at most).
KEPT = 10_000


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """What applying one cancel found."""

    outcome: Literal["cancelled", "too_late", "unknown"]
    due_ms: int | None = None
    #: ``too_late``: when the job was sent to its target (epoch ms).
    forwarded_ms: int | None = None


class Outcomes:
    """Bounded memory of cancel outcomes (by ingest partition and offset) and of forwards."""

    def __init__(self) -> None:
        self._outcomes: OrderedDict[tuple[int, int], CancelOutcome] = OrderedDict()
        self._waiters: dict[tuple[int, int], asyncio.Future[CancelOutcome]] = {}
        #: job id -> (due ms, forwarded ms) of the most recent forwards
        self._forwarded: OrderedDict[bytes, tuple[int, int]] = OrderedDict()

    def forwarded(self, job_id: bytes, due_ms: int, at_ms: int) -> None:
        """A forward of ``job_id`` was acknowledged (a later cancel is too late)."""
        self._forwarded[job_id] = (due_ms, at_ms)
        self._forwarded.move_to_end(job_id)
        while len(self._forwarded) > KEPT:
            self._forwarded.popitem(last=False)

    def not_pending(self, job_id: bytes) -> CancelOutcome:
        """The outcome of a cancel of a job that is not pending."""
        found = self._forwarded.get(job_id)
        if found is None:
            return CancelOutcome("unknown")
        return CancelOutcome("too_late", found[0], found[1])

    def record(self, partition: int, offset: int, outcome: CancelOutcome) -> None:
        """The cancel at ``offset`` of ``partition`` was applied with ``outcome``."""
        where = (partition, offset)
        self._outcomes[where] = outcome
        while len(self._outcomes) > KEPT:
            self._outcomes.popitem(last=False)
        waiter = self._waiters.pop(where, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)

    async def wait(self, partition: int, offset: int, timeout_s: float) -> CancelOutcome | None:
        """The outcome of the cancel at ``offset``, once applied here; None after ``timeout_s``."""
        where = (partition, offset)
        known = self._outcomes.get(where)
        if known is not None:
            return known
        waiter = self._waiters.get(where)
        if waiter is None:
            waiter = self._waiters[where] = asyncio.get_running_loop().create_future()
        try:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
            return None
        finally:
            if not waiter.done():
                self._waiters.pop(where, None)
