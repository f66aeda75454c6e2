"""A local table that may be ahead of its changelog is rebuilt from the changelog on next start.

How it gets ahead: a command's local write is done (step 1 of the durability order in
``app.ingest.apply_batch``), then the producer gives up on its changelog record (the broker
refused it past the delivery timeout). The local replay mark says the command was applied, so a
restart that kept the database would skip the command when Faust delivers it again, and the
changelog (hence a standby, or any restart from it) would never get it.

What happens instead, in this order:

1. the worker stops committing consumer offsets
   (:class:`app.upstream.consumer.BatchDrainingConsumer`), so every command since the last
   commit is delivered again;
2. a marker file in the table directory says why;
3. the worker crashes;
4. on the next start, before any table opens, the table directory is emptied: every partition
   is restored from its changelog, and the commands delivered again are applied anew.

A worker that dies (SIGKILL, a crash, the machine) between a command's local write and the
broker's acknowledgement of its changelog record leaves the same kind of database: ahead of its
changelog, whose replay mark (written only once acknowledged) lets the command be applied again,
but a cancel or replace applied again finds its effect already there and writes nothing to the
changelog. Such a partition holds :data:`tables.keys.UNACKED_KEY`
(:class:`tables.store.PartitionStore`); the next start removes its database before any table
opens (:func:`remove_unacked_partitions`), so it is restored from the changelog.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from rocksdict import AccessType, Options, Rdict

from tables.keys import UNACKED_KEY

__all__ = [
    "MARKER",
    "mark_for_rebuild",
    "rebuild_if_marked",
    "remove_unacked_partitions",
    "stop_for_rebuild",
]

log = logging.getLogger(__name__)

#: The marker's file name in the table directory.
MARKER = "REBUILD-FROM-CHANGELOG"

_crashes: set[asyncio.Future[Any]] = set()


def stop_for_rebuild(app: Any, reason: str, exc: BaseException) -> None:
    """Steps 1-3 on a Faust ``app`` whose local table got ahead of its changelog."""
    refuse_commits = getattr(app.consumer, "refuse_commits", None)
    if refuse_commits is not None:  # app.upstream's consumer: any Kafka, not only Tansu
        refuse_commits(reason)
    mark_for_rebuild(Path(app.conf.tabledir), reason)
    crash = asyncio.ensure_future(app.crash(exc))
    _crashes.add(crash)  # keep a reference until it ran
    crash.add_done_callback(_crashes.discard)


def mark_for_rebuild(tabledir: Path, reason: str) -> None:
    """Make the next start rebuild every table partition in ``tabledir`` from its changelog."""
    tabledir.mkdir(parents=True, exist_ok=True)
    marker = tabledir / MARKER
    partial = marker.with_name(MARKER + ".tmp")
    partial.write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {reason}\n")
    os.replace(partial, marker)  # a crash leaves the whole marker or none
    log.critical("the local tables will be rebuilt from their changelogs on the next start")


def rebuild_if_marked(tabledir: Path) -> str | None:
    """Empty ``tabledir`` if it is marked; the marker's text, or None if it was not marked.

    The marker goes last, so a crash in between empties the directory again next time.
    """
    marker = tabledir / MARKER
    if not marker.exists():
        return None
    reason = marker.read_text().strip()
    log.warning("rebuilding the local tables from their changelogs (marked: %s)", reason)
    for entry in tabledir.iterdir():
        if entry.name == MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    marker.unlink()
    return reason


def remove_unacked_partitions(tabledir: Path) -> list[str]:
    """Remove the partition databases in ``tabledir`` that hold changes their changelog never
    acknowledged (the worker died first); their names. Recovery restores them in full."""
    removed: list[str] = []
    for path in sorted(tabledir.rglob("*.db")) if tabledir.exists() else []:
        if not path.is_dir() or not _holds_unacked(path):
            continue
        log.warning(
            "%s held changes its changelog had not acknowledged when the worker stopped: "
            "restoring it from the changelog",
            path.name,
        )
        shutil.rmtree(path)
        removed.append(path.name)
    return removed


def _holds_unacked(path: Path) -> bool:
    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        return db.get(UNACKED_KEY) is not None
    finally:
        db.close()
