"""The partition databases behind a Faust table with a ``rocksdb://`` store.

tables/store.py reads and writes them directly (why: its module docstring); these functions
give it the databases without Faust's table API, and Faust's encoding of its persisted offset.
The direct access is the store's design (due-order scans, writes to the command's partition);
its speed against Faust's table API was not measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.types import TP

import app.upstream  # noqa: F401  (checks the library versions first)
from tables.store import PartitionDB

__all__ = [
    "open_dbs",
    "open_or_create_db",
    "persisted_offset",
    "persisted_offset_entry",
    "set_persisted_offset",
]


def open_dbs(table: Any) -> Mapping[int, PartitionDB]:
    """The partition databases Faust has open now (reads faust/stores/rocksdb.py ``Store._dbs``).

    Called each time: Faust creates the store lazily and drops revoked partitions.
    """
    dbs: Mapping[int, PartitionDB] = table.data._dbs
    return dbs


def open_or_create_db(table: Any, partition: int) -> PartitionDB:
    """The partition's database, opened if needed (faust/stores/rocksdb.py
    ``Store._db_for_partition``, lines 482-487)."""
    db: PartitionDB = table.data._db_for_partition(partition)
    return db


def set_persisted_offset(table: Any, topic: str, partition: int, offset: int) -> None:
    """Record Faust's persisted changelog offset, unless the partition was revoked meanwhile."""
    if partition in table.data._dbs:  # not revoked meanwhile (would reopen it)
        table.data.set_persisted_offset(TP(topic, partition), offset)


def persisted_offset(table: Any, topic: str, partition: int) -> int | None:
    """Faust's persisted changelog offset of an open partition database (None if unknown)."""
    if partition not in table.data._dbs:
        return None
    offset: int | None = table.data.persisted_offset(TP(topic, partition))
    return offset


def persisted_offset_entry(table: Any, offset: int) -> tuple[bytes, bytes]:
    """The ``(key, value)`` Faust's recovery reads as the persisted offset.

    A copy of the encoding in faust/stores/rocksdb.py ``Store.set_persisted_offset`` (lines
    396-404), so that a bulk restore writes it in the same write batch as its records.
    """
    key: bytes = table.data.offset_key
    return key, str(offset).encode()
