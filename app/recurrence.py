"""Recurring jobs: a cron rule in a time zone, or a fixed interval, and when it next fires.

A recurring job is one job in the table, due at its next occurrence. When the forward of an
occurrence is acknowledged, the agent writes the job again at the occurrence after it, in the
step that would have removed a one-shot job (:meth:`app.ingest.TableWrites.remove_fired`): a
crash between the two re-forwards the same occurrence (same ``delayq-job-id`` and
``delayq-due-ms``), never loses the series.

The rules, written once here (README "Recurring jobs" quotes them):

- **cron**: the five standard fields, or ``@hourly``, ``@daily`` (``@midnight``), ``@weekly``,
  ``@monthly``, ``@yearly`` (``@annually``), in the job's IANA time zone (default UTC).
  Evaluated by cronsim, which handles daylight saving time like Debian's cron:

  - a local time that does not exist (clocks go forward) fires at the first minute after the
    gap: a daily 02:30 in Europe/Berlin fires at 03:00 on the spring day;
  - a local time that exists twice (clocks go back) fires once, at its first instance (02:30
    summer time); rules that fire every hour or minute keep firing by elapsed time, so an
    hourly job fires at both 02:00s;
- **every**: a fixed interval of at least :data:`MIN_EVERY_MS`, counted from the first
  occurrence (``first + k * every``: a late forward does not shift the later ones);
- **until**: no occurrence after it; the job ends after its last one;
- **missed occurrences** (no worker ran, or the worker lagged): a firing pass sends one
  occurrence, the most recent one due, and counts the ones before it as skipped; the series
  goes on from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from app.errors import InvalidRecord
from app.times import MAX_DUE_MS

__all__ = ["CRON_ALIASES", "MAX_SKIPPED_COUNTED", "MIN_EVERY_MS", "Rule", "parse_rule"]

#: The shortest interval: shorter ones would keep a partition's firing pass busy for one job.
MIN_EVERY_MS = 1_000
#: Missed occurrences of a cron rule are counted one by one up to this many (an interval's are
#: computed): a minutely rule missed for a year would otherwise hold the agent for seconds.
MAX_SKIPPED_COUNTED = 1_000
#: The named rules and the five fields each stands for.
CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_UTC = "UTC"


@dataclass(frozen=True, slots=True)
class Rule:
    """When a recurring job fires: exactly one of ``cron`` and ``every_ms``."""

    #: The cron rule as given (an alias stays an alias).
    cron: str | None = None
    every_ms: int | None = None
    #: IANA time zone the cron rule is read in.
    timezone: str = _UTC
    #: No occurrence after this (epoch ms); None: the series runs until cancelled.
    until_ms: int | None = None

    def after(self, occurrence_ms: int) -> int | None:
        """The occurrence after ``occurrence_ms``; None when the series ends before it."""
        following = self.first_after(occurrence_ms)
        return following if self._within(following) else None

    def first_after(self, timestamp_ms: int) -> int:
        """The first occurrence after ``timestamp_ms``, ``until_ms`` aside: a series started then
        with no due time begins there (the caller refuses one that ends before it starts)."""
        if self.every_ms is not None:
            return timestamp_ms + self.every_ms
        return _cron_after(self._fields, self.timezone, timestamp_ms)

    def latest(self, occurrence_ms: int, limit_ms: int) -> tuple[int, int]:
        """The most recent occurrence at or before ``limit_ms``, counting on from
        ``occurrence_ms`` (itself due by then), and how many occurrences it skips.

        ``(occurrence_ms, 0)`` when the next one is not due by ``limit_ms``.
        """
        following = self.after(occurrence_ms)
        if following is None or following > limit_ms:
            return occurrence_ms, 0
        end = limit_ms if self.until_ms is None else min(limit_ms, self.until_ms)
        if self.every_ms is not None:
            steps = (end - occurrence_ms) // self.every_ms
            return occurrence_ms + steps * self.every_ms, steps
        latest = _cron_at_or_before(self._fields, self.timezone, end)
        skipped = 1  # occurrence_ms itself, then those between it and the latest
        for when in _cron_occurrences(self._fields, self.timezone, occurrence_ms):
            if when >= latest or skipped >= MAX_SKIPPED_COUNTED:
                break
            skipped += 1
        return latest, skipped

    def describe(self) -> str:
        """The rule in words, for people (the dashboard, ``delayq get``)."""
        if self.every_ms is not None:
            text = f"every {_duration_words(self.every_ms)}"
        else:
            text = CronSim(self._fields, datetime.now(UTC)).explain()
            text = f"{text} ({self.timezone})"
        if self.until_ms is not None:
            until = datetime.fromtimestamp(self.until_ms / 1000, UTC).isoformat()
            text += f", until {until.replace('+00:00', 'Z')}"
        return text

    @property
    def _fields(self) -> str:
        cron = self.cron or ""
        return CRON_ALIASES.get(cron.lower(), cron)

    def _within(self, occurrence_ms: int) -> bool:
        limit = MAX_DUE_MS if self.until_ms is None else min(self.until_ms, MAX_DUE_MS)
        return occurrence_ms <= limit


def parse_rule(
    cron: str | None, every_ms: int | None, timezone: str | None, until_ms: int | None
) -> Rule | None:
    """The rule the recurring-job fields describe (None: a one-shot job), or
    :class:`InvalidRecord` naming the field at fault. Field names are the headers' (the HTTP
    API and CLI say theirs)."""
    if cron is None and every_ms is None:
        if timezone is not None:
            raise InvalidRecord("delayq-timezone applies to a delayq-cron rule only")
        if until_ms is not None:
            raise InvalidRecord("delayq-until-ms needs delayq-cron or delayq-every-ms")
        return None
    if cron is not None and every_ms is not None:
        raise InvalidRecord("give delayq-cron or delayq-every-ms, not both")
    if every_ms is not None:
        if timezone is not None:
            raise InvalidRecord("delayq-timezone applies to a delayq-cron rule only")
        if every_ms < MIN_EVERY_MS:
            raise InvalidRecord(
                f"delayq-every-ms = {every_ms} is below the minimum of {MIN_EVERY_MS} ms"
            )
        return Rule(every_ms=every_ms, until_ms=until_ms)
    assert cron is not None
    zone = timezone if timezone is not None else _UTC
    _check_zone(zone)
    _check_cron(cron.strip())
    return Rule(cron=cron.strip(), timezone=zone, until_ms=until_ms)


def _check_zone(name: str) -> None:
    try:
        _zone(name)
    # OSError: a name that is a folder of the zone database ("Europe") or too long for a path.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidRecord(
            f"delayq-timezone {name!r} is not an IANA time zone (like Europe/Berlin or UTC)"
        ) from None


def _check_cron(cron: str) -> None:
    fields = CRON_ALIASES.get(cron.lower(), cron)
    if fields.startswith("@"):
        raise InvalidRecord(
            f"delayq-cron {cron!r} is not a cron rule: the named rules are "
            + ", ".join(CRON_ALIASES)
        )
    if len(fields.split()) != 5:
        raise InvalidRecord(
            f"delayq-cron {cron!r} is not a cron rule: it needs five fields "
            "(minute hour day-of-month month day-of-week)"
        )
    try:
        next(CronSim(fields, datetime.now(UTC)))
    except (CronSimError, StopIteration) as exc:
        raise InvalidRecord(f"delayq-cron {cron!r} is not a cron rule: {exc}") from None


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _local(ms: int, zone: str) -> datetime:
    return datetime.fromtimestamp(ms / 1000, _zone(zone))


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _cron_after(fields: str, zone: str, after_ms: int) -> int:
    """The first time the rule matches strictly after ``after_ms`` (whole minutes)."""
    try:
        return _ms(next(CronSim(fields, _local(after_ms, zone))))
    except (StopIteration, OverflowError, ValueError):  # past year 9999
        return MAX_DUE_MS + 1


def _cron_occurrences(fields: str, zone: str, after_ms: int) -> Iterator[int]:
    """Every time the rule matches after ``after_ms``, in order."""
    return (_ms(moment) for moment in CronSim(fields, _local(after_ms, zone)))


def _cron_at_or_before(fields: str, zone: str, at_ms: int) -> int:
    """The last time the rule matches at or before ``at_ms``."""
    # cronsim's reverse walk excludes its start: start a second later, drop a match past at_ms.
    walk = CronSim(fields, _local(at_ms, zone) + timedelta(seconds=1), reverse=True)
    for moment in walk:
        if _ms(moment) <= at_ms:
            return _ms(moment)
    raise AssertionError("a valid cron rule matches in the past")  # pragma: no cover


def _duration_words(ms: int) -> str:
    for unit_ms, unit in ((86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1_000, "s")):
        if ms % unit_ms == 0:
            return f"{ms // unit_ms} {unit}"
    return f"{ms} ms"
