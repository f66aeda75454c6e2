"""A pending job, its status, and its compact binary form in the jobs table.

The table stores raw bytes (no JSON, no pickles): a schedule costs one small struct pack, and a
value of any bytes survives unchanged. A job that was already past due when delayq received it
carries its receipt time in an 8-byte trailer (absent on every other job, so they cost nothing
more; a decoder that predates the trailer stops before it and reads the job without it).
A recurring job (app/recurrence.py) is format 2: the same fields, then the receipt time (-1:
none) and its rule.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from app import names
from app.recurrence import Rule
from app.rule_fields import rule_headers
from tables.keys import due_of

__all__ = [
    "FENCE_PREFIX",
    "Fired",
    "Header",
    "Job",
    "JobStatus",
    "decode_fired",
    "decode_job",
    "encode_fired",
    "encode_job",
    "is_recurring",
    "job_version",
]

Header = tuple[str, bytes | None]

_FORMAT = 1
_FORMAT_RECURRING = 2
_RULE_CRON = 1
_RULE_EVERY = 2
_HEAD = struct.Struct(">BqqH")  # format, version, due_ms, target length
_LEN = struct.Struct(">i")  # -1 = null
_U16 = struct.Struct(">H")
_I64 = struct.Struct(">q")


class JobStatus(StrEnum):
    """Where a job is, as far as one worker can tell."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"


@dataclass(frozen=True, slots=True)
class Job:
    """A scheduled job: what to write where, and when."""

    job_id: bytes
    due_ms: int
    target: str
    #: Key of the forwarded record; ``None`` means the job id.
    key: bytes | None
    #: ``None`` forwards a tombstone (a delayed delete on a compacted topic).
    value: bytes | None
    #: The producer's headers minus every ``delayq-`` header, in order.
    headers: tuple[Header, ...]
    #: Ingest offset of the schedule command: tells a replaced job from its successor.
    version: int
    #: When delayq received the schedule command, kept only if the job was past due by then.
    received_ms: int | None = None
    #: A recurring job's rule (``due_ms`` is its next occurrence); None for a one-shot job.
    rule: Rule | None = None

    @property
    def late_from_ms(self) -> int:
        """What lateness counts from: the due time, or the receipt of a job past due on arrival.

        A job scheduled in the past is late only by what delayq took after it got the command.
        """
        return self.due_ms if self.received_ms is None else max(self.due_ms, self.received_ms)

    def at(self, occurrence_ms: int) -> Job:
        """This job due at another occurrence (a recurring job's next, or the one a firing
        pass sends after missed ones): no receipt time, which counted for the first only."""
        return dataclasses.replace(self, due_ms=occurrence_ms, received_ms=None)

    @property
    def forward_key(self) -> bytes:
        """The key of the forwarded record."""
        return self.job_id if self.key is None else self.key

    def forward_headers(self) -> list[Header]:
        """Headers of the forwarded record: the producer's, then the stable de-dup pair."""
        return [
            *self.headers,
            (names.HEADER_JOB_ID, self.job_id),
            (names.HEADER_DUE_MS, str(self.due_ms).encode()),
        ]

    def forward_size(self, headers: list[Header] | None = None) -> int:
        """Bytes of key, value and headers of the forwarded record (Kafka's framing excluded)."""
        header_bytes = sum(len(n) + len(v or b"") for n, v in headers or self.forward_headers())
        return len(self.forward_key) + len(self.value or b"") + header_bytes

    def contract_headers(self) -> list[Header]:
        """Headers that would schedule this job again (used for dead letters)."""
        extra: list[Header] = [
            (names.HEADER_TARGET, self.target.encode()),
            (names.HEADER_DUE_MS, str(self.due_ms).encode()),
        ]
        if self.key is not None:
            extra.append((names.HEADER_KEY, self.key))
        if self.rule is not None:
            extra.extend(rule_headers(self.rule))
        return [*self.headers, *extra]


def _pack_bytes(out: list[bytes], data: bytes | None) -> None:
    if data is None:
        out.append(_LEN.pack(-1))
    else:
        out.append(_LEN.pack(len(data)))
        out.append(data)


def _unpack_bytes(raw: bytes, pos: int) -> tuple[bytes | None, int]:
    (length,) = _LEN.unpack_from(raw, pos)
    pos += _LEN.size
    if length < 0:
        return None, pos
    return raw[pos : pos + length], pos + length


def encode_job(job: Job) -> bytes:
    """The table value of ``job`` (the job id lives in the key; it is stored again for reads)."""
    target = job.target.encode()
    fmt = _FORMAT if job.rule is None else _FORMAT_RECURRING
    out = [_HEAD.pack(fmt, job.version, job.due_ms, len(target)), target]
    _pack_bytes(out, job.job_id)
    _pack_bytes(out, job.key)
    _pack_bytes(out, job.value)
    out.append(_U16.pack(len(job.headers)))
    for name, value in job.headers:
        encoded = name.encode()
        out.append(_U16.pack(len(encoded)))
        out.append(encoded)
        _pack_bytes(out, value)
    if job.rule is not None:
        out.append(_I64.pack(-1 if job.received_ms is None else job.received_ms))
        _pack_rule(out, job.rule)
    elif job.received_ms is not None:
        out.append(_I64.pack(job.received_ms))
    return b"".join(out)


def _pack_rule(out: list[bytes], rule: Rule) -> None:
    if rule.every_ms is not None:
        out.append(bytes([_RULE_EVERY]))
        out.append(_I64.pack(rule.every_ms))
    else:
        out.append(bytes([_RULE_CRON]))
        _pack_bytes(out, (rule.cron or "").encode())
    _pack_bytes(out, rule.timezone.encode())
    out.append(_I64.pack(-1 if rule.until_ms is None else rule.until_ms))


def _unpack_rule(raw: bytes, pos: int) -> Rule:
    kind = raw[pos]
    pos += 1
    cron: str | None = None
    every_ms: int | None = None
    if kind == _RULE_EVERY:
        (every_ms,) = _I64.unpack_from(raw, pos)
        pos += _I64.size
    else:
        text, pos = _unpack_bytes(raw, pos)
        cron = (text or b"").decode()
    zone, pos = _unpack_bytes(raw, pos)
    (until_ms,) = _I64.unpack_from(raw, pos)
    return Rule(cron, every_ms, (zone or b"UTC").decode(), None if until_ms < 0 else until_ms)


def decode_job(raw: bytes) -> Job:
    """Inverse of :func:`encode_job`."""
    fmt, version, due_ms, target_len = _HEAD.unpack_from(raw, 0)
    if fmt not in (_FORMAT, _FORMAT_RECURRING):
        raise ValueError(f"unknown job format {fmt}")
    pos = _HEAD.size
    target = raw[pos : pos + target_len].decode()
    pos += target_len
    job_id, pos = _unpack_bytes(raw, pos)
    key, pos = _unpack_bytes(raw, pos)
    value, pos = _unpack_bytes(raw, pos)
    (count,) = _U16.unpack_from(raw, pos)
    pos += _U16.size
    headers: list[Header] = []
    for _ in range(count):
        (name_len,) = _U16.unpack_from(raw, pos)
        pos += _U16.size
        name = raw[pos : pos + name_len].decode()
        pos += name_len
        header_value, pos = _unpack_bytes(raw, pos)
        headers.append((name, header_value))
    received_ms = _I64.unpack_from(raw, pos)[0] if len(raw) > pos else None
    rule = None
    if fmt == _FORMAT_RECURRING:
        rule = _unpack_rule(raw, pos + _I64.size)
        if received_ms is not None and received_ms < 0:
            received_ms = None
    return Job(
        job_id or b"", due_ms, target, key, value, tuple(headers), version, received_ms, rule
    )


def is_recurring(raw: bytes) -> bool:
    """Whether an encoded job is a recurring one, without decoding it."""
    return raw[0] == _FORMAT_RECURRING


def job_version(raw: bytes) -> int:
    """The version of an encoded job, without decoding the rest."""
    version: int = _HEAD.unpack_from(raw, 0)[1]
    return version


#: Key of a fence record on the fired topic (fired batches have no key); a random token follows.
FENCE_PREFIX = b"delayq-fence:"


#: One acknowledged forward, for the fired topic: (due key, version, occurrence ms). The
#: occurrence is the due time the forward carried: the key's, or for a recurring job that
#: missed occurrences, the latest one due (app/recurrence.py).
Fired = tuple[bytes, int, int]

#: Set in an entry's length field when an occurrence other than the key's due time follows.
_OCCURRENCE_FLAG = 0x8000


def encode_fired(entries: Iterable[Fired]) -> bytes:
    """A batch of acknowledged forwards for the fired topic."""
    out: list[bytes] = []
    for due_key, version, occurrence_ms in entries:
        own = occurrence_ms == due_of(due_key)
        out.append(_U16.pack(len(due_key) | (0 if own else _OCCURRENCE_FLAG)))
        out.append(due_key)
        out.append(_I64.pack(version))
        if not own:
            out.append(_I64.pack(occurrence_ms))
    return b"".join(out)


def decode_fired(raw: bytes) -> Sequence[Fired]:
    """Inverse of :func:`encode_fired`."""
    entries: list[Fired] = []
    pos = 0
    while pos < len(raw):
        (length,) = _U16.unpack_from(raw, pos)
        pos += _U16.size
        flagged = length & _OCCURRENCE_FLAG
        length &= ~_OCCURRENCE_FLAG
        due_key = raw[pos : pos + length]
        pos += length
        (version,) = _I64.unpack_from(raw, pos)
        pos += _I64.size
        occurrence_ms = due_of(due_key)
        if flagged:
            (occurrence_ms,) = _I64.unpack_from(raw, pos)
            pos += _I64.size
        entries.append((due_key, version, occurrence_ms))
    return entries
