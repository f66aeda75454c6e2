"""Key encoding of the jobs table: byte order is due-time order.

One RocksDB database per partition holds two key spaces:

- ``b"D" + be64(due_ms) + job_id`` -> the encoded job (``app.jobs.encode_job``): the due index.
  Big-endian unsigned due times sort bytewise in time order, so a scan from
  ``due_prefix(t0)`` up to ``due_prefix(now + 1)`` yields exactly the due jobs, earliest first.
- ``b"I" + job_id`` -> ``be64(due_ms)``: the id index, so replace and cancel need no scan.

Faust's own offset key (``b"__faust\\0offset__"``) sorts after both spaces.
"""

from __future__ import annotations

import struct

__all__ = [
    "APPLIED_KEY",
    "DUE_END",
    "DUE_PREFIX",
    "GAP_KEY",
    "ID_END",
    "ID_PREFIX",
    "MOVED_OUT_KEY",
    "MOVED_PREFIX",
    "STALE_KEY",
    "TAG_KEY",
    "UNACKED_KEY",
    "decode_due_ms",
    "due_key",
    "due_of",
    "due_prefix",
    "encode_due_ms",
    "id_key",
    "index_entry",
    "moved_key",
    "split_due_key",
]

#: ``b"A"`` -> ``be64(offset)``: the last ingest offset applied to this partition (changelogged),
#: so that commands Faust delivers again after a crash are not applied twice.
APPLIED_KEY = b"A"
#: ``b"G"`` -> ``be64(offset)`` (local only): the changelog offset up to which a standby copy is
#: known to hold every record; its replay skipped some after it (tables/store.py). The next
#: active recovery starts from there.
GAP_KEY = b"G"
#: A key no reader uses: a stale changelog record in Faust's replay is made a delete of it.
STALE_KEY = b"Z"
#: ``b"U"`` (local only): present while the database holds changes whose changelog records the
#: broker has not acknowledged. A worker that finds it at start restores the partition from the
#: changelog instead (tables/rebuild.py): the changes were lost to the changelog, and applying
#: their commands again would not write them (a cancel finds no job).
UNACKED_KEY = b"U"
#: ``b"T"`` -> ``be64(tag)`` (local only): the tag of this process's own changelog record at the
#: persisted offset, or lower. A replay that starts after the persisted offset skips records
#: tagged below it as a late writer's (tables/store.py ``fresh``).
TAG_KEY = b"T"
#: ``b"O"`` -> ``be64(offset)``: every command of this ingest partition below it that was moved
#: to another partition is acknowledged there (changelogged). From it up to ``APPLIED_KEY``, a
#: new owner moves the commands again itself (app/moving.py, step 5).
MOVED_OUT_KEY = b"O"
#: ``b"M" + be64(source partition)`` -> ``be64(offset)``: the highest offset of that ingest
#: partition whose command was moved here and applied (changelogged, like ``APPLIED_KEY``).
MOVED_PREFIX = b"M"
DUE_PREFIX = b"D"
#: First key after the due key space: the exclusive upper bound of a full due scan.
DUE_END = b"E"
ID_PREFIX = b"I"
#: First key after the id key space.
ID_END = b"J"

_U64 = struct.Struct(">Q")


def encode_due_ms(due_ms: int) -> bytes:
    """``due_ms`` as 8 big-endian bytes."""
    return _U64.pack(due_ms)


def decode_due_ms(raw: bytes) -> int:
    """Inverse of :func:`encode_due_ms`."""
    value: int = _U64.unpack(raw)[0]
    return value


def due_prefix(due_ms: int) -> bytes:
    """The smallest due key with this due time: where a scan for ``>= due_ms`` seeks."""
    return DUE_PREFIX + _U64.pack(due_ms)


def due_key(due_ms: int, job_id: bytes) -> bytes:
    """The due-index key of a job."""
    return DUE_PREFIX + _U64.pack(due_ms) + job_id


def due_of(key: bytes) -> int:
    """The due time of a due-index key (also of a :func:`due_prefix`)."""
    value: int = _U64.unpack_from(key, 1)[0]
    return value


def split_due_key(key: bytes) -> tuple[int, bytes]:
    """``(due_ms, job_id)`` of a due-index key."""
    return due_of(key), key[9:]


def id_key(job_id: bytes) -> bytes:
    """The id-index key of a job."""
    return ID_PREFIX + job_id


def index_entry(key: bytes) -> tuple[bytes, bytes]:
    """``(id_key, be64(due_ms))``: the id-index entry that the due key ``key`` implies."""
    return ID_PREFIX + key[9:], key[1:9]


def moved_key(source: int) -> bytes:
    """The key of the moved-commands mark for commands from ingest partition ``source``."""
    return MOVED_PREFIX + _U64.pack(source)
