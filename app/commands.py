"""Parsing an ingest record into a command: the wire contract, checked field by field.

Every rule of the contract that a record can break raises :class:`InvalidRecord` with a reason a
person can act on; the agent sends such records to the dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from app import names
from app.errors import InvalidRecord
from app.jobs import Header, Job
from app.names import MAX_JOB_ID_BYTES, valid_topic_name
from app.recurrence import Rule, parse_rule
from app.times import MAX_DUE_MS

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_NAME_BYTES",
    "Cancel",
    "Command",
    "parse_command",
]

#: The stored job's format counts headers and header-name bytes in 16 bits.
MAX_HEADERS = 65_535
MAX_HEADER_NAME_BYTES = 65_535

_CONTRACT_HEADERS = frozenset(
    {
        names.HEADER_TARGET,
        names.HEADER_DUE_MS,
        names.HEADER_DELAY_MS,
        names.HEADER_KEY,
        names.HEADER_CRON,
        names.HEADER_TIMEZONE,
        names.HEADER_EVERY_MS,
        names.HEADER_UNTIL_MS,
    }
)


@dataclass(frozen=True, slots=True)
class Cancel:
    """Remove the pending job with this id, if any."""

    job_id: bytes


Command = Job | Cancel


def _contract_headers(headers: Iterable[Header]) -> tuple[dict[str, bytes | None], list[Header]]:
    """Split headers into delayq's own (each at most once) and the producer's."""
    ours: dict[str, bytes | None] = {}
    theirs: list[Header] = []
    for name, value in headers:
        if not name.startswith(names.HEADER_PREFIX):
            theirs.append((name, value))
        elif name in ours:
            raise InvalidRecord(f"header {name} appears more than once")
        elif name in _CONTRACT_HEADERS:
            ours[name] = value
        # Other delayq- headers (e.g. delayq-job-id of a re-scheduled forward) are dropped:
        # the forward adds fresh ones.
    return ours, theirs


#: More digits than any due time up to year 9999 (and far below Python's int() digit limit).
_MAX_DIGITS = 20


def _ms_header(name: str, raw: bytes | None, *, low: int, high: int) -> int:
    text = (raw or b"").decode("ascii", errors="replace").strip()
    if len(text) > _MAX_DIGITS:
        raise InvalidRecord(f"header {name} is longer than {_MAX_DIGITS} characters")
    if not text.isdigit() or not text.isascii():
        raise InvalidRecord(f"header {name} must be a non-negative decimal integer, got {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise InvalidRecord(f"header {name} = {value} is out of range [{low}, {high}]")
    return value


def _text_header(name: str, raw: bytes | None) -> str:
    try:
        text = (raw or b"").decode()
    except UnicodeDecodeError:
        raise InvalidRecord(f"header {name} is not UTF-8") from None
    if not text.strip():
        raise InvalidRecord(f"header {name} is empty")
    return text


def _rule(ours: dict[str, bytes | None]) -> Rule | None:
    """The recurrence the headers ask for (app/recurrence.py); None for a one-shot job."""

    def text(name: str) -> str | None:
        return _text_header(name, ours[name]) if name in ours else None

    def ms(name: str) -> int | None:
        return _ms_header(name, ours[name], low=0, high=MAX_DUE_MS) if name in ours else None

    return parse_rule(
        text(names.HEADER_CRON),
        ms(names.HEADER_EVERY_MS),
        text(names.HEADER_TIMEZONE),
        ms(names.HEADER_UNTIL_MS),
    )


def _first_due_ms(ours: dict[str, bytes | None], timestamp_ms: int, rule: Rule) -> int:
    """A recurring job's first occurrence: the due time or delay if given, else the rule's
    first occurrence after the record's timestamp."""
    if names.HEADER_DUE_MS in ours or names.HEADER_DELAY_MS in ours:
        due = _due_ms(ours, timestamp_ms)
    else:
        due = rule.first_after(timestamp_ms)
        if due > MAX_DUE_MS:
            raise InvalidRecord("the rule's first occurrence is beyond year 9999")
    if rule.until_ms is not None and due > rule.until_ms:
        raise InvalidRecord(
            f"{names.HEADER_UNTIL_MS} = {rule.until_ms} is before the first occurrence ({due})"
        )
    return due


def _due_ms(ours: dict[str, bytes | None], timestamp_ms: int) -> int:
    has_due = names.HEADER_DUE_MS in ours
    has_delay = names.HEADER_DELAY_MS in ours
    if has_due == has_delay:
        raise InvalidRecord(
            f"exactly one of {names.HEADER_DUE_MS} or {names.HEADER_DELAY_MS} is required"
        )
    if has_due:
        return _ms_header(names.HEADER_DUE_MS, ours[names.HEADER_DUE_MS], low=0, high=MAX_DUE_MS)
    delay = _ms_header(names.HEADER_DELAY_MS, ours[names.HEADER_DELAY_MS], low=0, high=MAX_DUE_MS)
    due = timestamp_ms + delay
    if due > MAX_DUE_MS:
        raise InvalidRecord(f"record timestamp + {names.HEADER_DELAY_MS} is beyond year 9999")
    return due


def _target(raw: bytes | None, forbidden: frozenset[str]) -> str:
    try:
        target = (raw or b"").decode()
    except UnicodeDecodeError:
        raise InvalidRecord(f"header {names.HEADER_TARGET} is not UTF-8") from None
    if not valid_topic_name(target):
        raise InvalidRecord(f"header {names.HEADER_TARGET} {target!r} is not a valid topic name")
    if target in forbidden:
        raise InvalidRecord(f"header {names.HEADER_TARGET} {target!r} is an internal delayq topic")
    return target


def parse_command(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[Header],
    *,
    timestamp_ms: int,
    version: int,
    forbidden_targets: frozenset[str],
) -> Command:
    """The command an ingest record carries, or :class:`InvalidRecord` saying why not.

    ``timestamp_ms`` is the record's timestamp (the base of ``delayq-delay-ms``), ``version``
    its offset (distinguishes a job from a later replacement with the same id and due time).
    """
    if not key:
        raise InvalidRecord("record key (the job id) is missing or empty")
    if len(key) > MAX_JOB_ID_BYTES:
        raise InvalidRecord(f"record key (the job id) is longer than {MAX_JOB_ID_BYTES} bytes")
    ours, theirs = _contract_headers(headers)
    if names.HEADER_TARGET not in ours:
        if value is not None:
            raise InvalidRecord(f"header {names.HEADER_TARGET} is missing")
        if ours:
            raise InvalidRecord(
                f"a cancel (null value, no {names.HEADER_TARGET}) must not carry "
                + ", ".join(sorted(ours))
            )
        return Cancel(key)
    # Only a schedule stores headers; the stored form counts them in 16 bits.
    if len(theirs) > MAX_HEADERS:
        raise InvalidRecord(f"more than {MAX_HEADERS} headers")
    if any(len(name.encode()) > MAX_HEADER_NAME_BYTES for name, _value in theirs):
        raise InvalidRecord(f"a header name is longer than {MAX_HEADER_NAME_BYTES} bytes")
    target = _target(ours[names.HEADER_TARGET], forbidden_targets)
    rule = _rule(ours)
    due_ms = (
        _due_ms(ours, timestamp_ms) if rule is None else _first_due_ms(ours, timestamp_ms, rule)
    )
    return Job(
        job_id=key,
        due_ms=due_ms,
        target=target,
        key=ours.get(names.HEADER_KEY),
        value=value,
        headers=tuple(theirs),
        version=version,
        rule=rule,
    )
