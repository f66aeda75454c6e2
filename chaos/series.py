"""Recurring jobs in a chaos run: the occurrences each series should forward, and those it did.

A schedule with ``delayq-every-ms`` is a *series* (the reconciler knows interval rules only, the
load sends no cron rule): its occurrences are ``first + k * every``, none after
``delayq-until-ms`` (app/recurrence.py). Each is forwarded like a one-shot job, with
``delayq-job-id`` and ``delayq-due-ms`` = the occurrence; a re-delivery carries the same pair.

A series lives from its first occurrence until a later command for its job id ends it (a cancel,
or a replace, which starts a new series or a one-shot job under the same id), judged like a
one-shot job's cancel: by when the broker acknowledged that command where the ingest guard waits
for it (:meth:`chaos.reconcile.Book.guarded_at`). A series nothing ended lives to the
*horizon*: the time the reconciler read the ingest topic (or the last one-shot due time, if
later); the run then waits for its occurrences like for one-shot jobs.

Every occurrence due from the first one up to the end of the series' life (``until``, the
horizon, or the acknowledgement of the command that ended it) is:

- **forwarded** (at least once: further forwards of the pair are *duplicates*), at or after its
  due time (else *forwarded early*: must be 0);
- or **never forwarded**: delayq forwards only the latest occurrence due after a stall and counts
  the ones before it as ``occurrences_skipped`` on the worker; never-forwarded occurrences beyond
  the workers' total of that counter must be 0;
- or, for a series that a cancel or replace ended, **cut off**: due before that command was
  acknowledged, but after the series' last forward (the worker applied the command before the
  next occurrence was written or sent: the series was waiting for its previous forward's
  acknowledgement, or no worker fired while the command was on its way). Not a failure, counted.

An occurrence due after the command that ended its series was acknowledged must not be forwarded
(the cancel guarantee, per occurrence): must be 0. A command whose acknowledgement the generator
never saw makes the forwards of occurrences due after it was written races (*ack unknown*).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.metrics import quantile

__all__ = ["AFTER_END", "FORWARDED", "RACE_ACK_UNKNOWN", "Series", "SeriesTally"]

#: What a series' first forward of an occurrence was: due in its life, due after the command
#: that ended it was acknowledged (a failure), or after that command was written, with its
#: acknowledgement unknown (a race).
FORWARDED, AFTER_END, RACE_ACK_UNKNOWN = "forwarded", "after its end", "race, ack unknown"
#: Missing occurrences listed per sample.
_SAMPLE_OCCURRENCES = 10


@dataclass(slots=True)
class Series:
    """One recurring schedule of a job, and the forwards of its occurrences."""

    job_id: bytes
    #: Its schedule's index among its job's commands, in the order delayq applies them.
    index: int
    first: int
    every: int
    until: int | None
    #: The command that ended it: "cancel" or "replace" (None: nothing did, it lives on).
    ended_by: str | None = None
    #: When that command was written, and acknowledged where the guard waits for it (None:
    #: unknown to the generator).
    ended_written: int | None = None
    ended_acked: int | None = None
    #: No occurrence due after this is expected: ``until``, the horizon, the end of its life.
    expect_until: int = 0
    #: Occurrence -> timestamp of its first forward.
    forwarded: dict[int, int] = field(default_factory=dict)
    duplicates: int = 0

    def on_rule(self, due: int) -> bool:
        """Whether ``due`` is one of its occurrences."""
        if due < self.first or (due - self.first) % self.every:
            return False
        return self.until is None or due <= self.until

    def occurrences(self, up_to: int) -> range:
        """Its occurrences due at or before ``up_to``."""
        last = up_to if self.until is None else min(up_to, self.until)
        return range(self.first, last + 1, self.every) if last >= self.first else range(0)

    @property
    def last_expected(self) -> int | None:
        """Its last occurrence expected to be forwarded (None: none is)."""
        expected = self.occurrences(self.expect_until)
        return expected[-1] if expected else None

    def end(self, what: str, written: int, acked: int | None, horizon: int) -> None:
        """A cancel or replace written at ``written`` (acknowledged at ``acked``) ends it."""
        self.ended_by, self.ended_written, self.ended_acked = what, written, acked
        # Acknowledged at an occurrence's due time exactly is a race: the worker may fire at due.
        self.expect_until = min(horizon, written if acked is None else acked)

    def forward(self, due: int, ts: int) -> str | None:
        """A forward of occurrence ``due`` at ``ts``: how it stands (None: a duplicate)."""
        if due in self.forwarded:
            self.duplicates += 1
            return None
        self.forwarded[due] = ts
        if self.ended_by is None:
            return FORWARDED
        if self.ended_acked is None:
            assert self.ended_written is not None
            return RACE_ACK_UNKNOWN if due > self.ended_written else FORWARDED
        return AFTER_END if due > self.ended_acked else FORWARDED

    def tally(self) -> SeriesTally:
        """Its expected occurrences: forwarded, cut off by the command that ended it, or not."""
        tally = SeriesTally(series=1, duplicates=self.duplicates)
        last_forward = max(self.forwarded, default=None)
        for due in self.occurrences(self.expect_until):
            first = self.forwarded.get(due)
            tally.expected += 1
            if first is not None:
                tally.forwarded += 1
                tally.lateness_ms.append(first - due)
            elif self.ended_by is not None and (last_forward is None or due > last_forward):
                tally.cut_off += 1
                if self.ended_acked is not None:
                    tally.max_cut_off_ms = max(tally.max_cut_off_ms, self.ended_acked - due)
            else:
                tally.never_forwarded += 1
                if len(tally.missing) < _SAMPLE_OCCURRENCES:
                    tally.missing.append(due)
        return tally

    def describe(self) -> dict[str, Any]:
        """Its rule and life, for samples."""
        return {
            "first_ms": self.first,
            "every_ms": self.every,
            "until_ms": self.until,
            "ended_by": self.ended_by,
            "ended_written_ms": self.ended_written,
            "ended_acked_ms": self.ended_acked,
            "expected_until_ms": self.expect_until,
        }


@dataclass
class SeriesTally:
    """Occurrence figures, of one series or added up over several."""

    series: int = 0
    expected: int = 0
    forwarded: int = 0
    never_forwarded: int = 0
    cut_off: int = 0
    #: The longest time from a cut-off occurrence's due time to the acknowledgement that ended
    #: its series: a long one is a series that stalled before its cancel.
    max_cut_off_ms: int = 0
    duplicates: int = 0
    lateness_ms: list[int] = field(default_factory=list)
    #: A few never-forwarded occurrences (of one series).
    missing: list[int] = field(default_factory=list)

    def add(self, other: SeriesTally) -> None:
        self.series += other.series
        self.expected += other.expected
        self.forwarded += other.forwarded
        self.never_forwarded += other.never_forwarded
        self.cut_off += other.cut_off
        self.max_cut_off_ms = max(self.max_cut_off_ms, other.max_cut_off_ms)
        self.duplicates += other.duplicates
        self.lateness_ms += other.lateness_ms

    def lateness(self) -> dict[str, int | None]:
        """p50 / p99 / max of the first forward of each expected occurrence after its due."""
        late = sorted(self.lateness_ms)
        return {
            "p50": quantile(late, 0.50),
            "p99": quantile(late, 0.99),
            "max": late[-1] if late else None,
        }
