"""The reconciler: what the ingest topic asked for against what reached the target topics.

From the ingest topic, each job id's commands give its final state, in the order delayq
applies them: the order of the job's home partition (``murmur2(id) % partitions``). A command
written there is applied at its offset; one written to another partition is applied where its
moved copy (header ``delayq-moved-from``) lies in the home partition, the copy the worker does
not skip (:meth:`Book.close_ingest` follows its rule: per source partition, a copy at or below
the highest source offset already applied is skipped). Commands of one job written to one
partition keep their order; commands written to different partitions (a job whose producers
partition differently: *mixed*) are applied in the order they reach the home partition, which
may differ from the order the broker acknowledged them in (reported, not a failure: the moved
one took one more hop). The last schedule wins, and a cancel after the last schedule cancels the
job. Jobs whose final state is a schedule are *expected*: exactly one forward with their
``delayq-job-id`` and ``delayq-due-ms`` (and that schedule's value, key and target) must reach
the target topic, at or after the due time.

Each forwarded record is matched to the schedule of its job that it carries (same due time and
value). Then:

- **early**: its timestamp (CreateTime, the worker's clock when it sent it) is before its
  ``delayq-due-ms``. Must be 0.
- **mismatched**: no schedule of that job id carries this due time, value, key and target (an
  unknown id, another job's value, a wrong target...). Must be 0.
- **duplicate**: a further forward of the same schedule. Allowed (at-least-once), counted; each
  must carry the same ``delayq-job-id`` as the first (a value forwarded under two job ids is a
  *foreign duplicate*, must be 0).
- a forward of a schedule that a later command superseded (replace or cancel), judged by when
  the broker acknowledged that command in the job's home partition, where the ingest guard
  waits for it: for a command written there, when it acknowledged it to the load generator
  (:class:`chaos.acks.AckTimes`); for a moved one, by when its copy there was acknowledged, the
  earliest acknowledgement the generator saw of a record after the copy in that partition (an
  upper bound, one record away at the load's rate). Acknowledged there before the schedule's
  due time, it must have won: *cancelled/replaced, acknowledged before due, still forwarded*.
  Must be 0. Acknowledged at or after the due time, the forward and the command raced (a
  *race*, reported apart); so does a command whose acknowledgement the generator never saw
  (counted apart again, as *ack unknown*). A moved command counts from its own
  acknowledgement, where it was written: the ingest guard holds a job while a command for it
  waits on another partition to be moved, so acknowledged before the due time, it must win too.
- **never forwarded**: expected jobs without a forward of their final schedule once the run has
  waited long enough. Must be 0.
- **moved commands never applied**: commands written off their job's home partition without a
  copy there that the worker applies. Must be 0.

Recurring schedules (``delayq-every-ms``) are judged per occurrence instead (chaos/series.py):
their forwards are matched to the schedule whose rule has their due time, and count in none of
the figures above but the mismatched forwards and the duplicates under another job id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.gaps import read_raw_range
from app.jobs import job_version
from app.moving import home_partition, parse_moved_from
from app.recurrence import MIN_EVERY_MS
from chaos.acks import AckTimes
from chaos.series import AFTER_END, RACE_ACK_UNKNOWN, Series, SeriesTally

__all__ = [
    "BEFORE_DUE",
    "CLOSE_MS",
    "RACE",
    "Book",
    "Follower",
    "Forward",
    "Parsed",
    "Superseded",
    "changelog_history",
    "parse_ingest",
    "read_to_end",
]

CANCEL = -1
#: When the broker acknowledged the command superseding a forwarded schedule: before its due
#: time (it must have won), or at or after it or unknown (a race).
BEFORE_DUE, RACE = "acked before due", "race"
#: Close calls, counted apart: commands of a mixed job acknowledged less than this apart.
CLOSE_MS = 1_000
#: Buckets of the time between a duplicate and the first forward of its schedule.
DUPLICATE_GAPS = (
    (1_000, "< 1 s"),
    (10_000, "1-10 s"),
    (29_000, "10-29 s"),
    (40_000, "29-40 s"),
    (70_000, "40-70 s"),
    (1 << 62, ">= 70 s"),
)
H_TARGET = "delayq-target"
H_DUE = "delayq-due-ms"
H_DELAY = "delayq-delay-ms"
H_KEY = "delayq-key"
H_JOB_ID = "delayq-job-id"
H_EVERY = "delayq-every-ms"
H_UNTIL = "delayq-until-ms"
H_CRON = "delayq-cron"
H_TIMEZONE = "delayq-timezone"


@dataclass(slots=True)
class Cmd:
    """One ingest command for a job: a schedule (``due`` >= 0) or a cancel (``due`` = -1)."""

    #: Its offset in the job's home partition, where delayq applies it (the job version a
    #: schedule gives); -1 for a moved command no applied copy of which is there (yet).
    offset: int
    ts: int
    due: int
    vhash: int = 0
    target: str | None = None
    fkey: bytes | None = None
    #: (partition, offset) the producer wrote it to, when that is not the home partition.
    landed: tuple[int, int] | None = None
    #: When the broker acknowledged it to the load generator (None: unknown).
    acked: int | None = None
    #: By when it was acknowledged in the home partition (``acked``, or for a moved command an
    #: upper bound: see the module doc); None: unknown.
    home_acked: int | None = None
    #: A recurring schedule's interval (None: a one-shot job; ``due`` is the first occurrence)
    #: and the time after which it has no occurrence.
    every: int | None = None
    until: int | None = None

    def on_rule(self, due: int) -> bool:
        """Whether a forward due at ``due`` is this schedule's: its due time, or for a
        recurring one any of its occurrences (chaos/series.py)."""
        if self.every is None:
            return due == self.due
        on_grid = due >= self.due and (due - self.due) % self.every == 0
        return on_grid and (self.until is None or due <= self.until)


@dataclass(slots=True)
class JobLog:
    #: The job's home partition (its jobs table partition).
    partition: int
    cmds: list[Cmd] = field(default_factory=list)

    @property
    def recurring(self) -> bool:
        """Whether a schedule of the job is recurring (the load never mixes the kinds)."""
        return any(cmd.every is not None for cmd in self.cmds)


def _home_order(cmd: Cmd) -> tuple[bool, int, int]:
    """Commands in the order delayq applies them: by home offset; those without a place there
    (never applied, or not moved yet) last, in the order they were acknowledged (or sent)."""
    return cmd.offset < 0, cmd.offset, cmd.ts if cmd.acked is None else cmd.acked


def _written_to(cmd: Cmd) -> int:
    """The partition the producer wrote a command to (-1: its job's home partition)."""
    return -1 if cmd.landed is None else cmd.landed[0]


@dataclass
class MixedOrder:
    """Jobs whose commands were written to more than one partition (producers that partition
    differently): the order delayq applied them in (their home partition's) against the order
    the broker acknowledged them in. Not a failure: a moved command takes one hop more."""

    jobs: int = 0
    #: Pairs of one job's commands written to different partitions, acknowledged less than
    #: CLOSE_MS apart (the close calls).
    close_pairs: int = 0
    #: Such pairs applied in the other order than acknowledged: less than CLOSE_MS apart,
    #: and further apart (with the widest gap).
    reordered_close: int = 0
    reordered_apart: int = 0
    max_reordered_gap_ms: int = 0
    #: Jobs whose final state is not that of the command acknowledged last.
    outcome_changed: int = 0

    def add(self, cmds: list[Cmd]) -> None:
        """One job's commands, in the order delayq applies them."""
        if len({_written_to(cmd) for cmd in cmds}) < 2:
            return
        self.jobs += 1
        for i, first in enumerate(cmds):
            for then in cmds[i + 1 :]:
                if _written_to(first) != _written_to(then):
                    self._pair(first.acked, then.acked)
        acked = [cmd.acked for cmd in cmds]
        if None not in acked and cmds[-1].acked != max(a for a in acked if a is not None):
            self.outcome_changed += 1

    def _pair(self, first: int | None, then: int | None) -> None:
        """Two commands applied in this order, acknowledged at ``first`` and ``then``."""
        if first is None or then is None:
            return
        close = abs(then - first) < CLOSE_MS
        self.close_pairs += close
        if then >= first:
            return
        if close:
            self.reordered_close += 1
        else:
            self.reordered_apart += 1
            self.max_reordered_gap_ms = max(self.max_reordered_gap_ms, first - then)


@dataclass(frozen=True, slots=True)
class Forward:
    topic: str
    partition: int
    offset: int
    ts: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class Parsed(NamedTuple):
    """An ingest command: a schedule's due time (a recurring one's first occurrence) or
    CANCEL, its target and forward key, and a recurring schedule's interval and end."""

    due: int
    target: str | None = None
    fkey: bytes | None = None
    every: int | None = None
    until: int | None = None


def parse_ingest(
    key: bytes | None, value: bytes | None, ts: int, headers: Iterable[tuple[str, bytes]]
) -> Parsed | None:
    """The command an ingest record holds; None if delayq dead-letters it (or it has a cron
    rule: the load sends none, and the reconciler follows interval rules only)."""
    hs = dict(headers)
    if not key:
        return None
    if H_TARGET not in hs:
        contract = {H_DUE, H_DELAY, H_KEY, H_EVERY, H_UNTIL, H_CRON, H_TIMEZONE}
        return Parsed(CANCEL) if value is None and not contract & hs.keys() else None
    if H_CRON in hs:
        return None
    try:
        every = int(hs[H_EVERY]) if H_EVERY in hs else None
        until = int(hs[H_UNTIL]) if H_UNTIL in hs else None
        if H_DUE in hs:
            due = int(hs[H_DUE])
        elif H_DELAY in hs or every is None:
            due = ts + int(hs[H_DELAY])
        else:  # a series without a due time: its first occurrence is one interval on
            due = ts + every
    except (KeyError, ValueError):
        return None
    if not _valid_rule(due, every, until):
        return None
    return Parsed(due, hs[H_TARGET].decode(), hs.get(H_KEY), every, until)


def _valid_rule(due: int, every: int | None, until: int | None) -> bool:
    """Whether delayq accepts a schedule's recurrence fields (app/recurrence.py, parse_rule)."""
    if every is None:
        return until is None
    return every >= MIN_EVERY_MS and (until is None or until >= due)


class Superseded(NamedTuple):
    """How a forwarded schedule was superseded: ``what`` (cancel/replace), ``when``
    (BEFORE_DUE/RACE), and how long before the due time the command was acknowledged (negative:
    after it; None: the acknowledgement is unknown)."""

    what: str
    when: str
    acked_before_due_ms: int | None


@dataclass
class Anomaly:
    kind: str
    job_id: str
    detail: dict[str, Any]


class Book:
    """Ingest commands per job id, and the forwards matched against them.

    ``partitions``: the ingest topic's, to know each job's home partition; None: every command
    counts as written to its job's home partition (nothing is moved).
    """

    def __init__(self, acks: AckTimes | None = None, partitions: int | None = None) -> None:
        #: When the broker acknowledged each ingest command (filled by the load generator).
        self.acks = AckTimes() if acks is None else acks
        self.partitions = partitions
        self.jobs: dict[bytes, JobLog] = {}
        #: Commands, moved copies not included.
        self.ingest_records = 0
        self.bad_ingest = 0
        self.schedules = 0
        #: Of the schedules, the recurring ones.
        self.recurring_schedules = 0
        self.cancels = 0
        #: Moved copies: (home partition, source partition) -> [(source offset, home offset)].
        self._copies: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self.moved_copies = 0
        # Filled by close_ingest():
        #: Commands written off their job's home partition, and the copies the worker skips
        #: (moved again after a crash).
        self.off_home = 0
        self.moved_copies_skipped = 0
        #: Moved commands without an applied copy in the home partition: (job id, command).
        self.never_applied: list[tuple[bytes, Cmd]] = []
        #: Moved commands: their home acknowledgement minus their own (the hop, an upper bound).
        self.hops_ms: list[int] = []
        self.mixed = MixedOrder()
        self.expected: dict[bytes, Cmd] = {}
        self.missing: set[bytes] = set()
        self.max_due = 0
        # Forwards:
        self.forwards = 0
        self.first: dict[tuple[bytes, int, int], int] = {}  # (id, due, vhash) -> first ts
        self.duplicates = 0
        #: (id, due, vhash) -> timestamp of its second forward, for duplicated schedules.
        self.second: dict[tuple[bytes, int, int], int] = {}
        self.early: list[Anomaly] = []
        self.mismatched: list[Anomaly] = []
        self.foreign_duplicates: list[Anomaly] = []
        self._owner: dict[int, bytes] = {}  # vhash -> job id of its first forward
        #: (job id, superseded schedule index) -> how, for the forwards of such schedules.
        self.superseded: dict[tuple[bytes, int], Superseded] = {}
        #: Races among them whose command's acknowledgement the generator never saw.
        self.ack_unknown = 0
        #: Moved races: how long before the due time the generator saw each acknowledged.
        self.superseded_samples: list[Anomaly] = []
        #: Duplicates by time since the first forward of the same schedule.
        self.duplicate_gaps: dict[str, int] = {}
        #: job id -> [(forward ts, its due, index of the schedule it carries)], for samples.
        self.forward_log: dict[bytes, list[tuple[int, int, int]]] = {}
        self.early_count = 0
        self.mismatched_count = 0
        self.foreign_count = 0
        # Recurring schedules (chaos/series.py), filled by close_ingest():
        #: Occurrences due up to this are expected of the series nothing ended.
        self.horizon = 0
        #: (job id, schedule index) -> the series of each applied recurring schedule.
        self.series: dict[tuple[bytes, int], Series] = {}
        #: Series nothing ended whose last expected occurrence (or a later one) is not forwarded
        #: yet: the run waits for them as for the missing one-shot jobs.
        self.series_behind: set[tuple[bytes, int]] = set()
        #: Forwards of jobs with a recurring schedule, and among them those sent before their
        #: due time, of occurrences due after the cancel or replace that ended their series was
        #: acknowledged (by "cancel" / "replace"), and races with an unknown acknowledgement.
        self.occurrence_forwards = 0
        self.occurrences_early = 0
        self.occurrences_after_end: dict[str, int] = {}
        self.occurrence_races_ack_unknown = 0
        self.occurrence_samples: list[Anomaly] = []

    # -- ingest ---------------------------------------------------------------------------

    def add_ingest(
        self,
        partition: int,
        offset: int,
        ts: int,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]],
    ) -> None:
        """One ingest record, in offset order within its partition."""
        headers = list(headers)
        moved = parse_moved_from(headers)
        if moved is not None:
            self.moved_copies += 1
            source, source_offset = moved
            self._copies.setdefault((partition, source), []).append((source_offset, offset))
            return
        self.ingest_records += 1
        parsed = parse_ingest(key, value, ts, headers)
        if parsed is None or key is None:
            self.bad_ingest += 1
            return
        home = partition if self.partitions is None else home_partition(key, self.partitions)
        job = self.jobs.get(key)
        if job is None:
            job = self.jobs[key] = JobLog(home)
        cmd = Cmd(offset, ts, parsed.due)
        if parsed.due == CANCEL:
            self.cancels += 1
        else:
            self.schedules += 1
            self.recurring_schedules += parsed.every is not None
            cmd.vhash, cmd.target, cmd.fkey = hash(value), parsed.target, parsed.fkey
            cmd.every, cmd.until = parsed.every, parsed.until
        if home != partition:
            cmd.offset, cmd.landed = -1, (partition, offset)
        job.cmds.append(cmd)

    def close_ingest(self, horizon_ms: int = 0) -> None:
        """Place the moved commands, order every job's commands as delayq applies them; the
        final state of every job: the expected forwards; the series of the recurring schedules,
        whose occurrences are expected up to ``horizon_ms`` (or the last one-shot due time, if
        later) unless a command ended them before. After the last :meth:`add_ingest`, with
        every acknowledgement noted."""
        placed = self._applied_copies()
        for job_id, job in self.jobs.items():
            for cmd in job.cmds:
                self._place(job, cmd, placed, job_id)
            job.cmds.sort(key=_home_order)
            self.mixed.add(job.cmds)
            last = job.cmds[-1]
            if last.due != CANCEL and last.every is None:
                self.expected[job_id] = last
                self.max_due = max(self.max_due, last.due)
        self.missing = set(self.expected)
        self.horizon = max(horizon_ms, self.max_due)
        self._open_series()

    def _open_series(self) -> None:
        """A :class:`Series` per applied recurring schedule, ended by the command after it."""
        for job_id, job in self.jobs.items():
            for index, cmd in enumerate(job.cmds):
                if cmd.every is None or cmd.offset < 0:  # never applied: a figure of its own
                    continue
                series = Series(job_id, index, cmd.due, cmd.every, cmd.until)
                series.expect_until = self.horizon
                if index + 1 < len(job.cmds):
                    nxt = job.cmds[index + 1]
                    what = "cancel" if nxt.due == CANCEL else "replace"
                    series.end(what, nxt.ts, self.guarded_at(nxt), self.horizon)
                self.series[job_id, index] = series
                last = series.last_expected
                if series.ended_by is None and last is not None:
                    self.series_behind.add((job_id, index))
                    self.max_due = max(self.max_due, last)

    def waiting(self) -> int:
        """What the run waits for: expected jobs not forwarded yet, and series nothing ended
        whose occurrences have not reached the horizon yet."""
        return len(self.missing) + len(self.series_behind)

    @staticmethod
    def guarded_at(cmd: Cmd) -> int | None:
        """By when a cancel or replace wins against forwards due after it (module doc): its
        acknowledgement in the job's home partition, or where a moved one was written (the
        guard holds the job until it is moved). None: unknown."""
        return cmd.acked if cmd.landed is not None else cmd.home_acked

    def _applied_copies(self) -> dict[tuple[int, int], int]:
        """(source partition, source offset) -> home offset of the moved copy the home applies.

        The worker's rule (app/ingest.py): per home and source partition, a copy at or below
        the highest source offset applied so far is skipped.
        """
        placed: dict[tuple[int, int], int] = {}
        for (_home, source), copies in self._copies.items():
            mark = -1
            for source_offset, home_offset in copies:
                if source_offset <= mark:
                    self.moved_copies_skipped += 1
                    continue
                mark = source_offset
                placed[source, source_offset] = home_offset
        return placed

    def _place(
        self, job: JobLog, cmd: Cmd, placed: dict[tuple[int, int], int], job_id: bytes
    ) -> None:
        """A command's acknowledgement times, and for a moved one its place at home."""
        if cmd.landed is None:
            cmd.acked = cmd.home_acked = self.acks.get(job.partition, cmd.offset)
            return
        self.off_home += 1
        cmd.acked = self.acks.get(*cmd.landed)
        home_offset = placed.get(cmd.landed)
        if home_offset is None:
            self.never_applied.append((job_id, cmd))
            return
        cmd.offset = home_offset
        cmd.home_acked = self.acks.earliest_after(job.partition, home_offset)
        if cmd.acked is not None and cmd.home_acked is not None:
            self.hops_ms.append(max(0, cmd.home_acked - cmd.acked))

    def one_shot_jobs(self) -> Iterable[JobLog]:
        """The jobs without a recurring schedule (the one-shot figures count only those)."""
        return (job for job in self.jobs.values() if not job.recurring)

    @property
    def scheduled_jobs(self) -> int:
        return sum(1 for job in self.one_shot_jobs() if any(c.due != CANCEL for c in job.cmds))

    # -- forwards -------------------------------------------------------------------------

    def add_forward(self, fwd: Forward) -> None:
        self.forwards += 1
        hs = dict(fwd.headers)
        job_id = hs.get(H_JOB_ID)
        raw_due = hs.get(H_DUE)
        vhash = hash(fwd.value)
        where = f"{fwd.topic}[{fwd.partition}]@{fwd.offset}"
        try:
            due = int(raw_due) if raw_due is not None else -2
        except ValueError:
            due = -2
        if job_id is None or due < 0:
            self.mismatched_count += 1
            self._sample(self.mismatched, "no delayq-job-id / delayq-due-ms", b"?", where, fwd)
            return
        job = self.jobs.get(job_id)
        index = self._match(job_id, job, due, vhash, fwd) if job is not None else None
        # The schedule it carries tells its kind; a forward that matches none goes by its job.
        if job is not None and index is not None:
            recurring = job.cmds[index].every is not None
        else:
            recurring = job is not None and job.recurring
        self.occurrence_forwards += recurring
        if fwd.ts < due:
            self._early(recurring, job_id, where, fwd, due)
        owner = self._owner.setdefault(vhash, job_id)
        if owner != job_id:
            self.foreign_count += 1
            self._sample(self.foreign_duplicates, f"value of {owner!r}", job_id, where, fwd)
        if job is None or index is None:
            self._mismatched(job_id, where, fwd)
            return
        if recurring:
            self._occurrence(job_id, index, due, fwd, where)
            return
        self.log_forward(job_id, fwd.ts, due, index)
        ident = (job_id, due, vhash)
        first = self.first.get(ident)
        if first is not None:
            self.duplicates += 1
            self.second.setdefault(ident, fwd.ts)
            gap = fwd.ts - first
            bucket = next(name for limit, name in DUPLICATE_GAPS if gap < limit)
            self.duplicate_gaps[bucket] = self.duplicate_gaps.get(bucket, 0) + 1
            return
        self.first[ident] = fwd.ts
        if index == len(job.cmds) - 1:
            self.missing.discard(job_id)
            return
        self._superseded(job_id, job, index, fwd, where)

    def _early(self, recurring: bool, job_id: bytes, where: str, fwd: Forward, due: int) -> None:
        if recurring:
            self.occurrences_early += 1
            kind, samples = f"occurrence {due - fwd.ts} ms early", self.occurrence_samples
        else:
            self.early_count += 1
            kind, samples = f"{due - fwd.ts} ms early", self.early
        self._sample(samples, kind, job_id, where, fwd, due=due)

    def _mismatched(self, job_id: bytes, where: str, fwd: Forward) -> None:
        self.mismatched_count += 1
        self._sample(self.mismatched, "matches no schedule of its id", job_id, where, fwd)

    def _occurrence(self, job_id: bytes, index: int, due: int, fwd: Forward, where: str) -> None:
        """A forward of an occurrence of the series of ``job_id``'s schedule ``index``."""
        series = self.series.get((job_id, index))
        if series is None:  # its schedule was never applied: nothing may forward it
            self._mismatched(job_id, where, fwd)
            return
        how = series.forward(due, fwd.ts)
        if how == AFTER_END:
            assert series.ended_by is not None
            ended = self.occurrences_after_end
            ended[series.ended_by] = ended.get(series.ended_by, 0) + 1
            kind = f"occurrence due after the {series.ended_by} was acknowledged, forwarded"
            self._sample(self.occurrence_samples, kind, job_id, where, fwd, **series.describe())
        elif how == RACE_ACK_UNKNOWN:
            self.occurrence_races_ack_unknown += 1
        last = series.last_expected
        if last is not None and due >= last:
            self.series_behind.discard((job_id, index))

    def log_forward(self, job_id: bytes, ts: int, due: int, index: int) -> None:
        entries = self.forward_log.get(job_id)
        if entries is None:
            self.forward_log[job_id] = [(ts, due, index)]
        else:
            entries.append((ts, due, index))

    def _match(self, job_id: bytes, job: JobLog, due: int, vhash: int, fwd: Forward) -> int | None:
        """Index of the schedule this forward carries (latest first), or None."""
        for index in range(len(job.cmds) - 1, -1, -1):
            cmd = job.cmds[index]
            if cmd.due != CANCEL and cmd.vhash == vhash and cmd.on_rule(due):
                key = cmd.fkey if cmd.fkey is not None else job_id
                if cmd.target == fwd.topic and fwd.key == key:
                    return index
        return None

    def _superseded(self, job_id: bytes, job: JobLog, index: int, fwd: Forward, where: str) -> None:
        sched, nxt = job.cmds[index], job.cmds[index + 1]
        what, done = ("cancel", "cancelled") if nxt.due == CANCEL else ("replace", "replaced")
        acked, home_acked = nxt.acked, nxt.home_acked
        ahead = None if acked is None else sched.due - acked
        # Acknowledged at the due time exactly is a race too: the worker may fire at due.
        at = self.guarded_at(nxt)
        won = at is not None and at < sched.due
        when = BEFORE_DUE if won else RACE
        self.ack_unknown += acked is None and not won
        self.superseded[(job_id, index)] = Superseded(what, when, ahead)
        if at is not None and won and len(self.superseded_samples) < 50:
            self.superseded_samples.append(
                Anomaly(
                    f"{done}, acknowledged {sched.due - at} ms before due"
                    f"{'' if nxt.landed is None else ' (its moved copy)'}, still forwarded",
                    job_id.decode(errors="replace"),
                    {
                        "forward": where,
                        "partition": job.partition,
                        "schedule_offset": sched.offset,
                        "due_ms": sched.due,
                        f"{what}_offset": nxt.offset,
                        f"{what}_written_ms": nxt.ts,
                        f"{what}_acked_ms": acked,
                        f"{what}_acked_before_due_ms": ahead,
                        f"{what}_written_to": nxt.landed or "home",
                        f"{what}_acked_at_home_ms": home_acked,
                        "forwarded_ms": fwd.ts,
                        f"forwarded_after_{what}_acked_ms": acked and fwd.ts - acked,
                    },
                )
            )

    def _sample(
        self, out: list[Anomaly], kind: str, job_id: bytes, where: str, fwd: Forward, **extra: Any
    ) -> None:
        if len(out) < 50:
            detail = {
                "forward": where,
                "timestamp_ms": fwd.ts,
                "key": fwd.key.decode(errors="replace") if fwd.key else None,
                "headers": {n: v.decode(errors="replace") for n, v in fwd.headers},
                **extra,
            }
            out.append(Anomaly(kind, job_id.decode(errors="replace"), detail))

    # -- figures --------------------------------------------------------------------------

    def superseded_counts(self) -> dict[tuple[str, str], int]:
        """Forwards of superseded schedules by (cancel/replace, BEFORE_DUE/RACE)."""
        counts: dict[tuple[str, str], int] = {}
        for what, when, _ahead in self.superseded.values():
            counts[what, when] = counts.get((what, when), 0) + 1
        return counts

    def cancelled_jobs(self) -> tuple[int, int]:
        """Jobs whose final state is cancelled: all, and those cancelled before their due."""
        total = before = 0
        for job in self.one_shot_jobs():
            cmds = job.cmds
            if cmds[-1].due != CANCEL:
                continue
            last_sched = next((c for c in reversed(cmds) if c.due != CANCEL), None)
            if last_sched is None:
                continue
            total += 1
            cancel = cmds[cmds.index(last_sched) + 1]
            before += cancel.ts < last_sched.due
        return total, before

    def replaced_jobs(self) -> int:
        return sum(1 for job in self.one_shot_jobs() if sum(c.due != CANCEL for c in job.cmds) > 1)

    def series_tally(self) -> tuple[SeriesTally, list[dict[str, Any]]]:
        """The occurrences of every series added up, and up to 20 series that never forwarded
        an expected occurrence (their rule, life and first missing occurrences)."""
        total = SeriesTally()
        samples: list[dict[str, Any]] = []
        for series in self.series.values():
            tally = series.tally()
            total.add(tally)
            if tally.missing and len(samples) < 20:
                partition = self.jobs[series.job_id].partition
                samples.append(
                    {
                        "job_id": series.job_id.decode(errors="replace"),
                        **series.describe(),
                        "ingest_partition": partition,
                        "never_forwarded": tally.never_forwarded,
                        "missing_occurrences_ms": tally.missing,
                        "forwarded_occurrences_ms": sorted(series.forwarded)[:30],
                    }
                )
        return total, samples

    def lateness(self) -> list[tuple[int, int]]:
        """(due, lateness) of the first forward of every expected job that was forwarded."""
        out = []
        for job_id, cmd in self.expected.items():
            first = self.first.get((job_id, cmd.due, cmd.vhash))
            if first is not None:
                out.append((cmd.due, first - cmd.due))
        return out


def _reader(bootstrap: str) -> AIOKafkaConsumer:
    """A group-less consumer for reading topics back (started by the caller)."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        request_timeout_ms=60_000,
    )


async def read_to_end(
    bootstrap: str,
    topics: list[str],
    handle: Callable[[Any], None],
    *,
    partitions: set[int] | None = None,
) -> int:
    """Read ``topics`` from the beginning to their end offsets, calling ``handle(record)``.

    The end offsets are correct on Tansu only with ``app.tansu_compat`` installed.
    ``partitions``: only these partitions of each topic. Returns the number of records read.
    """
    consumer = _reader(bootstrap)
    await consumer.start()
    count = 0
    try:
        await consumer.topics()  # metadata of every topic
        tps = []
        for topic in topics:
            parts = consumer.partitions_for_topic(topic) or set()
            if partitions is not None:
                parts = parts & partitions
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        while not all(position >= end[tp] for tp, position in await _positions(consumer, tps)):
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in batch.values():
                for record in records:
                    handle(record)
                count += len(records)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return count


async def _positions(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> list[tuple[Any, int]]:
    return [(tp, await consumer.position(tp)) for tp in tps]


class Follower:
    """Reads topics from the beginning in the background, keeping the records for later.

    Started with the load, so the forwards are read while they are written: reading them all
    only after the load ended took longer than a bounded run has on a busy machine.

    Offsets the reader skipped are read again: Tansu can hand a reader the records after a batch
    another producer is still writing to the same partition, so the reader moves past that batch
    (quirk 8 in app/tansu_compat.py). The records read again come after the others.
    """

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self._records: list[Any] = []
        self._task: asyncio.Task[None] | None = None
        self._next: dict[TopicPartition, int] = {}
        self.read = 0
        #: Ranges of offsets the reader skipped, and the records found there when read again.
        self.skipped_ranges = 0
        self.read_again = 0

    async def start(self) -> None:
        consumer = _reader(self._bootstrap)
        await consumer.start()
        await consumer.topics()
        tps = [
            TopicPartition(topic, p)
            for topic in self._topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # From the first offset on: the very first fetch can skip records too.
        self._next = {tp: await consumer.position(tp) for tp in tps}
        self._task = asyncio.create_task(self._follow(consumer))

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
                skipped: list[tuple[TopicPartition, int, int]] = []
                for tp, records in batch.items():
                    for record in records:
                        expected = self._next[tp]
                        if record.offset > expected:
                            skipped.append((tp, expected, record.offset))
                        self._next[tp] = record.offset + 1
                    self._records.extend(records)
                    self.read += len(records)
                for tp, start, stop in skipped:
                    await self._read_again(tp, start, stop)
        finally:
            await consumer.stop()

    async def _read_again(self, tp: TopicPartition, start: int, stop: int) -> None:
        options = {"bootstrap_servers": self._bootstrap}
        found = await read_raw_range(options, tp.topic, tp.partition, start, stop)
        self.skipped_ranges += 1
        self.read_again += len(found)
        self._records.extend(found)
        self.read += len(found)

    def take(self) -> list[Any]:
        """The records read since the last call (in partition order per partition)."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()  # raise what stopped it
        records, self._records = self._records, []
        return records

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def changelog_history(
    bootstrap: str, changelog: str, wanted: dict[bytes, int]
) -> dict[bytes, list[dict[str, Any]]]:
    """Every jobs-changelog record of the ``wanted`` job ids (id -> table partition).

    The changelog holds the due-index keys (``b"D" + be64(due) + job id``): a put when a worker
    applied a schedule (value = the job, its version = the schedule's ingest offset), a
    tombstone when it applied a cancel or a replace with another due time, or removed the job
    after its forward. Record timestamps are the applying worker's clock.
    """
    history: dict[bytes, list[dict[str, Any]]] = {job_id: [] for job_id in wanted}

    def handle(record: Any) -> None:
        key = record.key or b""
        if not key.startswith(b"D") or len(key) < 9:
            return
        job_id = key[9:]
        if job_id not in history:
            return
        entry: dict[str, Any] = {
            "ts": record.timestamp,
            "offset": record.offset,
            "changelog": f"{record.partition}@{record.offset}",
            "due_ms": int.from_bytes(key[1:9], "big"),
        }
        if record.value is None:
            entry["op"] = "delete"
        else:
            entry["op"] = "put"
            entry["version"] = job_version(record.value)
        history[job_id].append(entry)

    await read_to_end(bootstrap, [changelog], handle, partitions=set(wanted.values()))
    return history
