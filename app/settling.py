"""Settling a firing pass: acks, retries, dead letters and the removal records.

Step 3 of firing (app/firing.py has 1 and 2): in the background, await the broker's acks of one
pass; for each acknowledged job append ``(due key, version)`` to a *fired* record sent to the
same partition of the fired topic. The next pass does not wait for this: a job due while the
acks of the previous pass are on their way is sent on time. A failed forward is sent again
after a backoff, and dead-lettered after ``forward_attempts``; a dead-lettered job, like a
forwarded one, stays until its removal is applied.

Step 4 is the agent's (app/ingest.py): it consumes the fired record and deletes the job, unless
it was replaced or cancelled since (its version differs).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from app.engine_state import EngineState, Forward, as_future, recheck
from app.errors import ForwardFailed
from app.jobs import Fired, encode_fired
from app.names import HEADER_ERROR

__all__ = ["Settling"]

log = logging.getLogger(__name__)

#: Retries of a failing forward are never spaced further apart than this.
_MAX_BACKOFF_MS = 60_000


class Settling(EngineState):
    """Acks of the forwards in flight, their retries and dead letters, and removal records."""

    async def settled(self) -> None:
        """Wait until every forward sent so far is acknowledged and its removal record sent."""
        while self._settling or self._removal_sender is not None:
            if self._settling:
                await asyncio.gather(*self._settling, return_exceptions=True)
            sender = self._removal_sender
            if sender is not None:
                self._removals_now.set()  # no linger: someone waits
                await asyncio.gather(sender, return_exceptions=True)

    def _settled_one(self, count: int, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        self._unsettled -= count

    async def _room_to_settle(self) -> None:
        # Bounds the forwards awaiting acks (memory) when a backlog is due.
        while self._settling and self._unsettled >= self.config.max_unsettled_forwards:
            await asyncio.wait(self._settling, return_when=asyncio.FIRST_COMPLETED)

    async def _settle(self, forwards: list[Forward], now: int) -> None:
        """Await the acks of one pass; send removals for the acknowledged, retry the rest."""
        try:
            await self._await_acks(forwards)
            fired: dict[int, list[Fired]] = {}
            retrying = False
            for fwd in forwards:
                if fwd.error is None:
                    self.stats.fired += 1
                    self.outcomes.forwarded(fwd.job.job_id, fwd.job.due_ms, now)
                    self.stats.lateness_ms.append(now - fwd.job.late_from_ms)
                elif await self._give_up(fwd, now) is not None:
                    retrying = True
                    continue
                entry = (fwd.due_key, fwd.job.version, fwd.job.due_ms)
                fired.setdefault(fwd.partition, []).append(entry)
            self._queue_removals(fired)
        except Exception:
            # Whatever was not settled is forwarded again rather than left in flight.
            log.exception("settling %d forwards failed; they will be sent again", len(forwards))
            for fwd in forwards:
                state = self._state(fwd.partition)
                state.in_flight.pop(fwd.due_key, None)
                self._put_behind(state, fwd.due_key)
            retrying = True
        if retrying:
            self._wake.set()  # the loop plans its wake-up around the retry times

    async def _await_acks(self, forwards: list[Forward]) -> None:
        """Wait for the broker's acks (one wait for all); a missing ack in time is a failure."""
        pending: dict[asyncio.Future[Any], list[Forward]] = {}
        for fwd in forwards:
            if fwd.ack is not None:  # one ack per record batch: shared by its forwards
                pending.setdefault(as_future(fwd.ack), []).append(fwd)
        if not pending:
            return
        done, late = await asyncio.wait(pending, timeout=self.config.forward_timeout_s)
        for fut in done:
            if not fut.cancelled() and fut.exception() is not None:
                for fwd in pending[fut]:
                    fwd.error = fut.exception()
        for fut in late:
            for fwd in pending[fut]:
                fwd.error = TimeoutError("no acknowledgement from the broker in time")

    async def _give_up(self, fwd: Forward, now: int) -> int | None:
        """Handle a failed forward: the time of its retry, or None once dead-lettered."""
        state = self._state(fwd.partition)
        self.stats.forward_failures += 1
        attempts = state.attempts.get(fwd.due_key, 0) + 1
        reason = f"forward to {fwd.job.target!r} failed: {fwd.error!r}"
        # Retrying cannot help a record that is too large or a topic that is refused.
        retriable = bool(getattr(fwd.error, "retriable", True)) and not isinstance(
            fwd.error, ForwardFailed
        )
        if retriable and attempts < self.config.forward_attempts:
            state.attempts[fwd.due_key] = attempts
            backoff = min(self.config.forward_retry_backoff_ms << (attempts - 1), _MAX_BACKOFF_MS)
            state.retry_at[fwd.due_key] = now + backoff
            state.in_flight.pop(fwd.due_key, None)
            recheck(state, now + backoff)
            log.warning("%s (attempt %d, retry in %d ms)", reason, attempts, backoff)
            return now + backoff
        try:
            await self.dead_letter(
                fwd.job.job_id,
                fwd.job.value,
                fwd.job.contract_headers(),
                f"{reason} after {attempts} attempts",
            )
        except Exception as exc:  # the dead-letter topic failed too: keep the job, retry later
            log.error("dead-lettering job %r failed: %r", fwd.job.job_id, exc)
            state.retry_at[fwd.due_key] = now + self.config.forward_retry_backoff_ms
            state.in_flight.pop(fwd.due_key, None)
            recheck(state, now + self.config.forward_retry_backoff_ms)
            return now + self.config.forward_retry_backoff_ms
        # Dead-lettered: like a forwarded job, it stays in flight until its removal is applied.
        state.attempts.pop(fwd.due_key, None)
        state.retry_at.pop(fwd.due_key, None)
        return None

    async def send_dead_letter(
        self, key: bytes | None, value: bytes | None, headers: Sequence[Any], reason: str
    ) -> asyncio.Future[Any]:
        """Hand a record with ``delayq-error`` to the producer; counted once acknowledged."""
        ack = as_future(
            await self.producer.send(
                self.config.dead_letter_topic,
                key,
                value,
                None,
                None,
                [*headers, (HEADER_ERROR, reason.encode())],
            )
        )

        def count(fut: asyncio.Future[Any]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                self.stats.count_dead_letter(key, reason, self.clock())

        ack.add_done_callback(count)
        return ack

    def dead_letter_in_background(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[Any],
        reason: str,
        release: Callable[[], None],
    ) -> None:
        """Dead-letter an ingest record without waiting for it; ``release`` once acknowledged.

        The agent goes on meanwhile: a dead-letter partition that refuses writes for a while
        holds back only the consumer's commit (``release`` lets it pass the record), never the
        partition's other commands. Sent again after a backoff until the broker takes it.
        """
        task = asyncio.ensure_future(self._dead_letter_until_acked(key, value, headers, reason))
        self._dead_lettering.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._dead_lettering.discard(task)
            if not task.cancelled():  # cancelled: the worker stops; the record comes again
                release()

        task.add_done_callback(done)

    async def _dead_letter_until_acked(
        self, key: bytes | None, value: bytes | None, headers: Sequence[Any], reason: str
    ) -> None:
        for attempt in itertools.count(1):
            try:
                await self.dead_letter(key, value, headers, reason)
                return
            except Exception as exc:
                delay_ms = min(self.config.forward_retry_backoff_ms * 2 ** (attempt - 1), 30_000)
                log.warning(
                    "dead letter not acknowledged (attempt %d, %r); again in %d ms",
                    attempt,
                    exc,
                    delay_ms,
                )
                await asyncio.sleep(delay_ms / 1000)

    async def dead_letters_settled(self) -> None:
        """Wait until every dead letter handed to :meth:`dead_letter_in_background` is acked."""
        while self._dead_lettering:
            await asyncio.gather(*self._dead_lettering, return_exceptions=True)

    async def dead_letter(
        self, key: bytes | None, value: bytes | None, headers: Sequence[Any], reason: str
    ) -> None:
        """Write a record to the dead-letter topic and await the broker's ack."""
        ack = await self.send_dead_letter(key, value, headers, reason)
        await asyncio.wait_for(ack, self.config.forward_timeout_s)

    def _queue_removals(self, fired: dict[int, list[Fired]]) -> None:
        for partition, entries in fired.items():
            self._removals.setdefault(partition, []).extend(entries)
        if self._removal_sender is None and self._removals:
            self._removal_sender = asyncio.ensure_future(self._send_removals())

    async def _send_removals(self) -> None:
        """After the linger, send the queued removals: one fired record per partition."""
        try:
            while self._removals:
                with contextlib.suppress(TimeoutError):
                    linger_s = self.config.removal_linger_ms / 1000
                    await asyncio.wait_for(self._removals_now.wait(), linger_s)
                removals, self._removals = self._removals, {}
                for partition, entries in removals.items():
                    step = self.config.fire_batch_max  # keeps each record well under 1 MB
                    for start in range(0, len(entries), step):
                        chunk = entries[start : start + step]
                        try:
                            await self._send_fired(partition, chunk)
                        except Exception as exc:
                            log.error("sending a removal record failed: %r", exc)
                            self._forget(partition, chunk)
        finally:
            self._removal_sender = None
            self._removals_now.clear()

    def _forget(self, partition: int, entries: Sequence[Fired]) -> None:
        """Their removal record was lost: forward the jobs again rather than let them linger."""
        state = self._parts.get(partition)
        if state is None:
            return  # handed over: the next owner forwards them
        for key, _version, _occurrence in entries:
            state.in_flight.pop(key, None)
            self._put_behind(state, key)
        self._wake.set()

    async def _send_fired(self, partition: int, entries: list[Fired]) -> None:
        ack = await self.producer.send(
            self.config.fired_topic, None, encode_fired(entries), partition, None, None
        )

        def forget_on_failure(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                self._forget(partition, entries)

        as_future(ack).add_done_callback(forget_on_failure)
