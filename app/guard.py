"""The ingest guard: a cancel or replace the broker acknowledged before a job's due time wins.

A job due at T is sent only once its partition has applied every ingest command that the broker
acknowledged before T. The firing pass (app/firing.py) sends, per partition, only the jobs due
at or before the partition's ``safe_ms``, which moves forward like this:

1. a pass holds back due jobs (due after ``safe_ms``) and asks for a probe;
2. the probe loop (app/probes.py) reads the clock, ``t``, then asks the broker for the ingest
   partitions' end offsets (high watermarks). The broker answers at or after ``t``, so every
   command it acknowledged before ``t`` lies below the end offset ``E`` it answers;
3. if the partition has applied every offset below ``E``, ``safe_ms`` becomes ``t``. If not,
   the probe reads the commands not applied yet (a peek, one more round trip: they are on the
   broker already) and ``safe_ms`` becomes ``t`` for every job but those whose ids these
   commands name: those wait until the agent has applied them (:meth:`note_applied`). A peek
   that cannot tell (too many commands, a gap in the offsets) leaves every job of the partition
   waiting for the agent.

Commands on other partitions. A command for a job may be written to any ingest partition and
moved to the job's home (app/moving.py); until it is there, the home's end offset does not cover
it. So the probe also reads, from every other ingest partition, the commands written since the
consumer group's committed offset (each once: a cursor per partition, read again from the
committed offset when a home partition is new to the worker), and notes those for jobs at home
here (:meth:`expect_move`). Below the committed offset every command was moved and acknowledged:
the committed offsets are read before the end offsets, so those moves lie below the home's end
offset and step 3 covers them (when it can tell: after a peek that cannot, they keep waiting).
Above it, the noted jobs wait until their moves are applied here (:meth:`moved_in`); a probe
that could not read every other partition up to its end offset advances nothing. A partition
expecting moves is probed even with nothing held back: a bad command is dead-lettered where it
landed, never moved, and only a probe (the committed offset passing it) ends the wait of its
job.

Rebalances. A probe takes a few round trips, and partitions may be revoked and assigned again
meanwhile (Faust revokes them all at every rebalance). What it found then belongs to states that
are gone: the new state of a partition has not noted the commands the probe passed over before
(they were noted in the old one), so a safe time from that probe would free their jobs. A probe
therefore applies nothing, notes nothing and moves no cursor when the assignment changed since it
began (:attr:`assignment_epoch`), and never makes a state for a partition that has none.

When the worker is caught up this costs one end-offsets round trip between a job's due time and
its forward; when commands are in flight to the agent, two. When the agent lags, the jobs named
by its backlog wait for it (late, never wrong). "Acknowledged" is with ``acks=all``: with
``acks=1`` a record the leader acknowledged can still be above the high watermark for as long as
replication takes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from app.engine_state import EngineState, PartitionState
from tables.keys import APPLIED_KEY, decode_due_ms, moved_key

__all__ = ["IngestGuard"]


class IngestGuard(EngineState):
    """Per partition: which due times are safe to fire, from probes and the applied offset."""

    def applied_offset(self, partition: int) -> int:
        """The highest ingest offset applied in ``partition`` (-1 if none): a replay guard too.

        Faust re-delivers what came after the last committed offset after a crash; applying
        such a schedule again would bring back a job that was cancelled or fired since.
        """
        state = self._parts.get(partition)
        if state is not None and state.applied is not None:
            return state.applied
        raw = self.store.read(partition, APPLIED_KEY)
        return -1 if raw is None else decode_due_ms(raw)

    def due_limit(self, partition: int, now: int) -> int:
        """Jobs due at or before this may be sent from ``partition`` now."""
        if not self.config.ingest_guard:
            return now
        return min(now, self._state(partition).safe_ms)

    def holds_back(self, state: PartitionState, now: int) -> bool:
        """Whether the guard holds due jobs of the partition back: due by ``now``, not safe."""
        return self.config.ingest_guard and state.safe_ms < state.next_due_ms <= now

    def probe_targets(self, active: Collection[int], now: int) -> list[int]:
        """Active partitions holding due jobs back, with no probe waiting for the agent; and
        those expecting moves (a command that is never moved, being bad, waits for a probe)."""
        targets = []
        for partition in active:
            state = self._parts.get(partition)
            if state is None or state.probe is not None:
                continue
            if state.inbound or self.holds_back(state, now):
                targets.append(partition)
        return targets

    @property
    def assignment_epoch(self) -> int:
        """Changes whenever partitions are revoked or assigned (module doc, "Rebalances")."""
        return self._assignment_epoch

    def _stale(self, epoch: int | None) -> bool:
        """Whether a probe begun at ``epoch`` began before the current assignment."""
        return epoch is not None and epoch != self._assignment_epoch

    def observe_end_offsets(
        self,
        taken_ms: int,
        ends: Mapping[int, int],
        unapplied_ids: Mapping[int, frozenset[bytes] | None] | None = None,
        inbound_read: bool = True,
        committed: Mapping[int, int] | None = None,
        epoch: int | None = None,
    ) -> None:
        """A probe taken at ``taken_ms`` found these end offsets (steps 2 and 3 of the doc).

        ``unapplied_ids``: per partition not caught up, the job ids of the commands between
        its applied offset and its end offset (None: the peek could not tell).
        ``inbound_read``: whether the probe read the other partitions up to their end offsets
        (module doc, "Commands on other partitions"); if not, nothing advances.
        ``committed``: the committed offsets the probe read before the end offsets. The moves
        they pass are forgotten here, in the same step that installs what covers them (a pass
        in between would see neither), and only in partitions caught up or peeked: a peek
        that cannot tell covers nothing.
        ``epoch``: the :attr:`assignment_epoch` the probe began at (None: now).
        """
        self.stats.ingest_probes += 1
        if not inbound_read or self._stale(epoch):
            return
        peeked = unapplied_ids or {}
        for partition, end in ends.items():
            state = self._parts.get(partition)
            if state is None:  # revoked meanwhile
                continue
            caught_up = self.applied_offset(partition) >= end - 1
            ids = None if caught_up else peeked.get(partition)
            if caught_up or ids is not None:
                # The moves the committed offsets pass lie below ``end``: applied, or named by
                # the peek. Not so when the peek cannot tell: they keep their jobs waiting.
                self._inbound_committed(partition, state, committed or {})
            if caught_up:
                self._advance(partition, taken_ms)
            elif ids is not None:
                state.blocked = ids
                state.blocked_until = end - 1
                self._advance(partition, taken_ms)
            elif state.probe is None:
                state.probe = (taken_ms, end)

    def note_applied(self, partition: int, offset: int) -> None:
        """The agent applied every command up to ``offset``: a waiting probe may be met."""
        state = self._state(partition)
        state.applied = offset
        if state.blocked and offset >= state.blocked_until:
            state.blocked = frozenset()
            state.next_due_ms = 0  # the jobs they held are behind the cursor: look again
            self._wake.set()
        probe = state.probe
        if probe is not None and offset >= probe[1] - 1:
            state.probe = None
            self._advance(partition, probe[0])

    def inbound_homes(self, homes: Collection[int], epoch: int | None = None) -> None:
        """The probe (begun at ``epoch``) reads for these home partitions now: if one is new,
        read everything again from the committed offsets (the commands for it were passed
        over)."""
        if self._stale(epoch):
            return  # its reads are dropped; the next probe sees the new homes
        if not self._inbound_homes.issuperset(homes):
            self._inbound_cursor.clear()
        self._inbound_homes = frozenset(homes)

    def inbound_start(self, source: int, committed: int) -> int:
        """Where the probe reads ingest partition ``source`` for commands to move here."""
        return max(self._inbound_cursor.get(source, committed), committed)

    def inbound_read_to(self, source: int, offset: int, epoch: int | None = None) -> None:
        """The probe begun at ``epoch`` read ``source`` up to (not including) ``offset``."""
        if not self._stale(epoch):
            self._inbound_cursor[source] = offset

    def expect_move(
        self, home: int, job_id: bytes, source: int, offset: int, epoch: int | None = None
    ) -> None:
        """A command for ``job_id`` at ``source``@``offset`` is to be moved to ``home`` (read
        by a probe begun at ``epoch``)."""
        state = self._parts.get(home)
        if state is None or self._stale(epoch):
            return  # not this worker's (any more), or noted in a state that is gone
        if offset <= self.moved_offset(home, source):
            return
        ids = state.inbound.setdefault(source, {})
        ids.pop(job_id, None)  # re-inserted: the dict stays in offset order
        ids[job_id] = offset

    def _inbound_committed(
        self, partition: int, state: PartitionState, committed: Mapping[int, int]
    ) -> None:
        """Forget the expected moves of a probed ``partition`` below the committed offsets: step 3
        of the same probe covers them (not in other partitions: their safe time may be ahead)."""
        for source, offset in committed.items():
            self._drop_inbound(partition, state, source, offset - 1)

    def moved_in(self, partition: int, source: int, offset: int) -> None:
        """Moves from ``source`` up to ``offset`` are applied in ``partition``."""
        state = self._parts.get(partition)
        if state is not None:
            self._drop_inbound(partition, state, source, offset)

    def _drop_inbound(self, partition: int, state: PartitionState, source: int, last: int) -> None:
        ids = state.inbound.get(source)
        if not ids:
            return
        done = list(_leading(ids.items(), last))
        for job_id in done:
            del ids[job_id]
        if not ids:
            del state.inbound[source]
        if done:
            state.next_due_ms = 0  # the jobs they held are behind the cursor: look again
            self._wake.set()

    def moved_offset(self, partition: int, source: int) -> int:
        """The highest offset of ingest partition ``source`` moved here and applied (-1: none)."""
        state = self._parts.get(partition)
        if state is not None and source in state.moved:
            return state.moved[source]
        raw = self.store.read(partition, moved_key(source))
        return -1 if raw is None else decode_due_ms(raw)

    def waiting_probe(self, partition: int) -> tuple[int, int] | None:
        """The probe ``(taken at ms, end offset)`` still waiting for the agent, if any."""
        state = self._parts.get(partition)
        return None if state is None else state.probe

    def guard_lag_ms(self, active: Collection[int], now: int) -> int:
        """How far behind the clock the guard holds due jobs: 0 if it holds none back."""
        lag = 0
        for partition in active:
            state = self._parts.get(partition)
            if state is not None and self.holds_back(state, now):
                lag = max(lag, now - state.next_due_ms)
        return lag

    def _advance(self, partition: int, safe_ms: int) -> None:
        state = self._state(partition)
        if safe_ms > state.safe_ms:
            state.safe_ms = safe_ms
            if state.next_due_ms <= safe_ms:
                self._wake.set()


def _leading(items: Iterable[tuple[bytes, int]], last: int) -> Iterable[bytes]:
    """The job ids at the front of an offset-ordered mapping with offsets up to ``last``."""
    for job_id, offset in items:
        if offset > last:
            return
        yield job_id
