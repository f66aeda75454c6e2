"""Moving commands to their job's home partition, so that any producer's partitioner works.

A job lives in one partition of the jobs table, its *home*: ``murmur2(job id) % partitions``,
the partition Kafka's default partitioner (Java, aiokafka, librdkafka's ``murmur2_random``)
gives its ingest records. A producer that partitions otherwise (sarama's FNV-1a, librdkafka's
``consistent_random``, a round-robin, a partition picked by hand) writes commands elsewhere.
The agent of that partition moves each such command to its home partition of the ingest topic:
the same key, value, headers and timestamp, plus :data:`HEADER_MOVED_FROM` naming where it
landed. The home applies it like any command. The order of a command's path, written here once:

1. the landing partition's agent parses the command; a bad one is dead-lettered there, never
   moved (so a move is never dead-lettered twice). A good one is handed to the mover, holding
   its record from the consumer's commit, and counts as handled in its partition;
2. the mover sends one destination's moves in their source order, one record batch at a time
   (atomic on the broker), the next only after the broker acknowledged the previous one, and a
   failed batch again until it is: no move lands ahead of an earlier one from the same sender;
3. once acknowledged, the hold is released: the consumer may commit past the command;
4. the home keeps, per source partition, the highest source offset it applied (changelogged
   with the replay mark: ``tables.keys.moved_key``) and skips a move at or below it. A worker
   that took over the source partition after a crash moves again what it cannot know was
   acknowledged (from the committed offset on, replays included): the home applies each once;
5. the source partition keeps the offset below which every move is acknowledged (changelogged,
   ``tables.keys.MOVED_OUT_KEY``), behind the replay mark by the moves in flight. A new owner
   reads the commands between the two back and moves them again itself before anything else:
   the stream does not always deliver them again (it may start past them), and the replay mark
   already counts them as handled.

A moved command is applied when it reaches its home, one produce round trip after it was
read: commands for one job written to different partitions are applied in the order they
reach the home. The ingest guard (app/guard.py, "Commands on other partitions") holds a job
while a command for it waits on another partition, so a moved cancel or replace acknowledged
before the due time wins.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka.partitioner import murmur2

from app.engine_state import EngineState
from app.jobs import Header
from app.names import HEADER_MOVED_FROM
from app.upstream.producer import TimedRecord
from tables.keys import MOVED_OUT_KEY, decode_due_ms, encode_due_ms

__all__ = [
    "PARTITIONER_PATTERNS",
    "Move",
    "Moving",
    "crc32_partition",
    "encode_moved_from",
    "fnv1a_partition",
    "home_partition",
    "parse_moved_from",
    "producer_partitioner",
]

log = logging.getLogger(__name__)

#: A failed move batch is sent again after this, doubling up to _RETRY_MAX_S.
_RETRY_BASE_S = 0.1
_RETRY_MAX_S = 10.0


def home_partition(job_id: bytes, partitions: int) -> int:
    """The partition a job lives in: Kafka's default partitioner on its id (murmur2)."""
    hashed: int = murmur2(job_id)
    return (hashed & 0x7FFFFFFF) % partitions


def encode_moved_from(partition: int, offset: int) -> bytes:
    """The :data:`HEADER_MOVED_FROM` value of a command moved from ``partition`` @ ``offset``."""
    return f"{partition}:{offset}".encode()


def parse_moved_from(headers: Sequence[Header]) -> tuple[int, int] | None:
    """``(source partition, source offset)`` of a moved command; None for any other record."""
    for name, value in headers:
        if name == HEADER_MOVED_FROM and value is not None:
            partition, _, offset = value.partition(b":")
            if partition.isdigit() and offset.isdigit():
                return int(partition), int(offset)
    return None


def _fnv1a_32(data: bytes) -> int:
    hashed = 0x811C9DC5
    for byte in data:
        hashed = ((hashed ^ byte) * 0x01000193) & 0xFFFFFFFF
    return hashed


def fnv1a_partition(job_id: bytes, partitions: int) -> int:
    """Where sarama's default partitioner puts a key: FNV-1a as a signed 32-bit value, made
    positive, mod the partition count (librdkafka's ``fnv1a`` agrees)."""
    fnv = _fnv1a_32(job_id)
    signed = fnv - (1 << 32) if fnv & 0x80000000 else fnv
    return abs(signed) % partitions


def crc32_partition(job_id: bytes, partitions: int) -> int:
    """Where librdkafka's default partitioner (``consistent_random``) puts a key: CRC-32."""
    return zlib.crc32(job_id) % partitions


#: How many answers :func:`producer_partitioner` has.
PARTITIONER_PATTERNS = 3


def producer_partitioner(job_id: bytes, partition: int, partitions: int) -> str:
    """A guess at the partitioner that put a command keyed ``job_id`` in ``partition``.

    For the log line that tells operators which producers could save a hop: sarama's default
    (FNV-1a, as a signed 32-bit value made positive) and librdkafka's (CRC-32) are recognised.
    """
    if fnv1a_partition(job_id, partitions) == partition:
        return "FNV-1a (sarama's default)"
    if crc32_partition(job_id, partitions) == partition:
        return "CRC-32 (librdkafka's default, consistent_random)"
    return "not by key hash (random, round-robin or chosen partitions)"


@dataclass(slots=True)
class Move:
    """One command on its way to its home partition."""

    record: TimedRecord
    #: Lets the consumer commit past the command's record once the move is acknowledged.
    release: Callable[[], None]


class Moving(EngineState):
    """Steps 2, 3 and 5 of the module doc: per destination, one ordered sender of moves."""

    def track_move_out(
        self, source: int, offset: int, release: Callable[[], None]
    ) -> Callable[[], None]:
        """Note a move of ``source``@``offset`` in flight; the returned release ends it."""
        pending = self._state(source).moving_out
        pending.add(offset)

        def done() -> None:
            pending.discard(offset)
            release()

        return done

    def moves_unacked_from(self, source: int, applied: int) -> int:
        """Every move of ``source``'s commands below this offset is acknowledged."""
        pending = self._state(source).moving_out
        return min(pending) if pending else applied + 1

    def mark_moved_out(self, source: int, offset: int) -> None:
        """Changelog the moved-out mark of ``source`` (step 5) when it changed; none for a
        partition none of whose commands was ever moved."""
        state = self._state(source)
        if not state.moved_out_loaded:
            state.moved_out_loaded = True
            state.moved_out_mark = self.moved_out_mark(source)
        if state.moved_out_mark is None and not state.moving_out:
            return
        if state.moved_out_mark != offset:
            state.moved_out_mark = offset
            self.store.put_once_acked(source, MOVED_OUT_KEY, encode_due_ms(offset))

    def moved_out_mark(self, source: int) -> int | None:
        """The moved-out mark of ``source`` as its database holds it (None: never written)."""
        raw = self.store.read(source, MOVED_OUT_KEY)
        return None if raw is None else decode_due_ms(raw)

    def move_in_background(
        self, topic: str, partition: int, record: TimedRecord, release: Callable[[], None]
    ) -> None:
        """Send a command to ``partition`` of ``topic`` after the moves queued before it."""
        queue = self._moves.setdefault(partition, [])
        queue.append(Move(record, release))
        sender = self._movers.get(partition)
        if sender is None or sender.done():
            self._movers[partition] = asyncio.ensure_future(self._send_moves(topic, partition))

    async def moves_settled(self) -> None:
        """Wait until every move handed over so far is acknowledged."""
        while any(not sender.done() for sender in self._movers.values()):
            await asyncio.gather(*self._movers.values(), return_exceptions=True)

    async def _send_moves(self, topic: str, partition: int) -> None:
        queue = self._moves[partition]
        attempt = 0
        while queue:
            try:
                ack, count = await self.producer.send_record_batch(
                    topic, partition, [move.record for move in queue]
                )
                await asyncio.wait_for(asyncio.ensure_future(ack), self.config.forward_timeout_s)
            except Exception as exc:
                attempt += 1
                delay_s = min(_RETRY_BASE_S * 2 ** (attempt - 1), _RETRY_MAX_S)
                log.warning(
                    "moving %d commands to ingest partition %d failed (attempt %d, %r); "
                    "again in %.1f s",
                    len(queue),
                    partition,
                    attempt,
                    exc,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
                continue
            attempt = 0
            sent, queue[:count] = queue[:count], []
            self.stats.moved += count
            for move in sent:
                move.release()
