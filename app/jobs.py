"""A pending job, its status, and its compact binary form in the jobs table.

The table stores raw bytes (no JSON, no pickles): a schedule costs one small struct pack, and a
value of any bytes survives unchanged. A job that was already past due when delayq received it
carries its receipt time in an 8-byte trailer (absent on every other job, so they cost nothing
more; a decoder that predates the trailer stops before it and reads the job without it).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from app import names

__all__ = [
    "FENCE_PREFIX",
    "Header",
    "Job",
    "JobStatus",
    "decode_fired",
    "decode_job",
    "encode_fired",
    "encode_job",
    "job_version",
]

Header = tuple[str, bytes | None]

_FORMAT = 1
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

    @property
    def late_from_ms(self) -> int:
        """What lateness counts from: the due time, or the receipt of a job past due on arrival.

        A job scheduled in the past is late only by what delayq took after it got the command.
        """
        return self.due_ms if self.received_ms is None else max(self.due_ms, self.received_ms)

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
    out = [_HEAD.pack(_FORMAT, job.version, job.due_ms, len(target)), target]
    _pack_bytes(out, job.job_id)
    _pack_bytes(out, job.key)
    _pack_bytes(out, job.value)
    out.append(_U16.pack(len(job.headers)))
    for name, value in job.headers:
        encoded = name.encode()
        out.append(_U16.pack(len(encoded)))
        out.append(encoded)
        _pack_bytes(out, value)
    if job.received_ms is not None:
        out.append(_I64.pack(job.received_ms))
    return b"".join(out)


def decode_job(raw: bytes) -> Job:
    """Inverse of :func:`encode_job`."""
    fmt, version, due_ms, target_len = _HEAD.unpack_from(raw, 0)
    if fmt != _FORMAT:
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
    return Job(job_id or b"", due_ms, target, key, value, tuple(headers), version, received_ms)


def job_version(raw: bytes) -> int:
    """The version of an encoded job, without decoding the rest."""
    version: int = _HEAD.unpack_from(raw, 0)[1]
    return version


#: Key of a fence record on the fired topic (fired batches have no key); a random token follows.
FENCE_PREFIX = b"delayq-fence:"


def encode_fired(entries: Iterable[tuple[bytes, int]]) -> bytes:
    """A batch of ``(due_key, version)`` acknowledgements for the fired topic."""
    out: list[bytes] = []
    for due_key, version in entries:
        out.append(_U16.pack(len(due_key)))
        out.append(due_key)
        out.append(_I64.pack(version))
    return b"".join(out)


def decode_fired(raw: bytes) -> Sequence[tuple[bytes, int]]:
    """Inverse of :func:`encode_fired`."""
    entries: list[tuple[bytes, int]] = []
    pos = 0
    while pos < len(raw):
        (length,) = _U16.unpack_from(raw, pos)
        pos += _U16.size
        due_key = raw[pos : pos + length]
        pos += length
        (version,) = _I64.unpack_from(raw, pos)
        pos += _I64.size
        entries.append((due_key, version))
    return entries
