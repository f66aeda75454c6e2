"""A worker frozen longer than its session timeout writes nothing more: it may be a zombie.

A process stopped for a while (a long GC pause, SIGSTOP, a stalled VM) sends no heartbeats; past
the session timeout the group gives its partitions to other workers. When it runs again it still
believes it owns them until its next heartbeat says otherwise, and in between it would forward
jobs and write changelog records from a table the new owner has moved past: a cancelled job
forwarded, or an old schedule written back into the changelog, where every later restore finds
it.

:class:`FreezeWatch` is a thread that ticks every 100 ms. A gap between two ticks, or since the
last tick, longer than the session timeout less one heartbeat interval means the whole process
stood still long enough for the group to expire it. Every write of the worker (forwards, removal
and fence records, changelog records) first asks :meth:`FreezeWatch.check`: after such a gap it
raises :class:`app.errors.FrozenTooLong`, and the worker stops as a table that may be ahead of its
changelog does (tables/rebuild.py: no more commits, rebuild from the changelog, crash), so that a
restart rejoins the group with a table restored from the changelog. A new assignment clears an
earlier gap: the group's view is fresh then, and recovery (tables/store.py) brings the table up
to date.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from app.errors import FrozenTooLong

__all__ = ["TICK_S", "FreezeWatch"]

#: How often the watch ticks.
TICK_S = 0.1


class FreezeWatch:
    """Notices that the whole process stood still for longer than ``limit_s``."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        #: Called with the error before :meth:`check` raises it (the worker: stop to rebuild).
        self.on_frozen: Callable[[FrozenTooLong], None] | None = None
        self._last_tick = time.monotonic()
        #: The longest gap seen since the last assignment (0: none over the limit).
        self._gap_s = 0.0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._last_tick = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="delayq-freeze", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(TICK_S):
            now = time.monotonic()
            gap = now - self._last_tick
            if gap > self.limit_s:
                self._gap_s = max(self._gap_s, gap)
            self._last_tick = now

    def frozen_for(self) -> float:
        """The longest stand-still over the limit since the last assignment (0.0: none)."""
        gap = max(self._gap_s, time.monotonic() - self._last_tick)
        return gap if gap > self.limit_s else 0.0

    def check(self) -> None:
        """Raise :class:`FrozenTooLong` if the process stood still past the limit."""
        gap = self.frozen_for()
        if gap:
            exc = FrozenTooLong(
                f"the worker stood still for {gap:.1f} s, longer than the group allows "
                f"({self.limit_s:.1f} s): its partitions may belong to another worker now"
            )
            if self.on_frozen is not None:
                self.on_frozen(exc)
            raise exc

    def assigned(self) -> None:
        """A new assignment: the group's view is fresh; an earlier stand-still is past."""
        self._gap_s = 0.0
        self._last_tick = time.monotonic()
