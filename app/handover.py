"""Handing partitions over (a rebalance, a restart) without forwarding a job twice.

1. The previous owner finishes its pass, settles its forwards and flushes its producer before
   it lets the partition go (:meth:`Handover.quiesce`, then app/timers.py ``hand_over``), so
   its removal records are in the fired topic.
2. The new owner sends a *fence* record (a random token) to the partition of the fired topic and
   does not fire the partition until the agent has read it back (:meth:`Handover.fence_passed`):
   by then every removal record before it has been applied.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Collection
from typing import Any

from app.engine_state import PartitionState, as_future, new_fence
from app.firing import Firing
from tables.keys import DUE_PREFIX

__all__ = ["Handover"]

log = logging.getLogger(__name__)


class Handover(Firing):
    """Assignment changes: forget revoked partitions, fence new ones."""

    def sync_assignment(self, generation: int, active: Collection[int]) -> None:
        """Forget revoked partitions; after any rebalance rescan the rest from the start.

        A rebalance may have restored changelog records into a partition without the agent
        seeing them, so watermarks are reset. A partition new to this worker gets a fence
        (see the module doc) and is not fired until the fence is read back.
        """
        for partition in list(self._parts):
            if partition not in active:
                del self._parts[partition]
                self.store.forget(partition)
        for partition in active:
            self._state(partition)
        if generation != self._generation:
            self._generation = generation
            for state in self._parts.values():
                state.watermark_ms = 0
                state.cursor = DUE_PREFIX
                state.behind.clear()
                state.next_due_ms = 0
                state.pending = None

    async def quiesce(self, revoked: Collection[int]) -> None:
        """Before partitions are handed over: let the running pass end, forget the partitions.

        The caller then flushes the producer, so their removal records reach the fired topic
        before the next owner's fence. A partition forgotten here is fenced again if it stays
        with (or comes back to) this worker, so no later pass fires it before that.
        """
        try:
            async with asyncio.timeout(self.config.forward_timeout_s * 2):
                async with self._pass_lock:
                    await self.settled()
        except TimeoutError:
            log.warning("a firing pass did not end before the partitions were handed over")
        self._assignment_epoch += 1  # a probe begun before frees nothing (app/guard.py)
        for partition in revoked:
            self._parts.pop(partition, None)
            self.store.forget(partition)

    def assigned(self) -> None:
        """A new assignment (before its tables are recovered): forget every partition state.

        Faust revokes every partition before it assigns (an eager rebalance), and
        :meth:`quiesce` forgot them then; a state here now was made since by work of the old
        assignment finishing late (an ack, a probe). Its safe time and notes belong to no
        assignment, so :meth:`sync_assignment` must start the partition afresh.
        """
        self._assignment_epoch += 1
        self._parts.clear()

    async def send_fences(self, active: Collection[int], now: int) -> None:
        """Send the fence record of every active partition that waits for one."""
        for partition in active:
            state = self._state(partition)
            if state.fence is None:
                continue
            if state.fence_sent_ms is not None:
                if now - state.fence_sent_ms < self.config.fence_resend_ms:
                    continue
                log.warning("partition %d: fence not read back in time, sending another", partition)
                state.fence = new_fence()
            ack = await self.producer.send(
                self.config.fired_topic, state.fence, b"", partition, None, None
            )
            state.fence_sent_ms = now
            as_future(ack).add_done_callback(functools.partial(_fence_lost, state, state.fence))

    def fence_passed(self, partition: int, fence: bytes) -> None:
        """The agent read ``fence`` back: the removals sent before it are applied."""
        state = self._parts.get(partition)
        if state is not None and state.fence == fence:
            state.fence = None
            self._wake.set()


def _fence_lost(state: PartitionState, fence: bytes, fut: asyncio.Future[Any]) -> None:
    # The broker did not take the fence: send it again on the next pass.
    if state.fence == fence and (fut.cancelled() or fut.exception() is not None):
        state.fence_sent_ms = None
