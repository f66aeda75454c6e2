"""``python -m bench.readrace``: does a reader skip records that several producers write at once?

No delay queue: ``--producers`` clients (each its own connection) write ``--records`` records
each to the same ``--partitions`` partitions of one topic, in small batches, while one reader
follows the topic. Then a second reader reads the whole topic again. It prints, per round, the
records acknowledged, the records the following reader got and the offset ranges it skipped,
and what the second reader got.

Why: on Tansu a reader that fetches while another producer's batch is still being written can
get the records after that batch and move past it (quirk 8 in app/tansu_compat.py). The
records are stored (the second reader finds them); only that reader never sees them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.broker import Broker, create_topics

__all__ = ["main"]

TOPIC = "readrace"


async def _produce(bootstrap: str, producer_no: int, args: argparse.Namespace) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        acks = []
        for i in range(args.records):
            key = f"p{producer_no}-{i}".encode()
            acks.append(await producer.send(TOPIC, key, key=key, partition=i % args.partitions))
            if i % 3 == 2:  # small batches, many requests
                await asyncio.sleep(0.001)
        for ack in acks:
            await ack
        return len(acks)
    finally:
        await producer.stop()


async def _read(bootstrap: str, until: asyncio.Event, total: int) -> tuple[int, list[Any]]:
    """Records read (distinct keys) and the (partition, expected, got) offset jumps seen."""
    reader = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
    )
    await reader.start()
    keys: set[bytes] = set()
    jumps: list[Any] = []
    next_offset: dict[int, int] = {}
    try:
        deadline: float | None = None
        while True:
            batch = await reader.getmany(timeout_ms=100)
            for tp, records in batch.items():
                for record in records:
                    expected = next_offset.get(tp.partition, 0)  # a new topic starts at 0
                    if record.offset != expected:
                        jumps.append((tp.partition, expected, record.offset))
                    next_offset[tp.partition] = record.offset + 1
                    keys.add(record.key or b"")
            if until.is_set():
                deadline = deadline or time.monotonic() + 5
                if len(keys) >= total or time.monotonic() > deadline:
                    return len(keys), jumps
    finally:
        await reader.stop()


async def _round(bootstrap: str, args: argparse.Namespace) -> str:
    written = asyncio.Event()
    total = args.producers * args.records
    following = asyncio.create_task(_read(bootstrap, written, total))
    acked = sum(
        await asyncio.gather(*(_produce(bootstrap, n, args) for n in range(args.producers)))
    )
    written.set()
    read, jumps = await following
    everything = asyncio.Event()
    everything.set()
    read_after, _ = await _read(bootstrap, everything, total)
    shown = ", ".join(f"p{p} {lo}-{hi - 1}" for p, lo, hi in jumps[:4])
    return (
        f"acked {acked:,}; following reader got {read:,}, skipped {len(jumps)} ranges"
        f"{' (' + shown + ')' if jumps else ''}; a later reader got {read_after:,}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readrace", description=__doc__)
    parser.add_argument("--producers", type=int, default=6, help="producers (default 6)")
    parser.add_argument("--records", type=int, default=10_000, help="records per producer")
    parser.add_argument("--partitions", type=int, default=2, help="partitions (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each on a new broker")
    args = parser.parse_args(argv)
    for number in range(1, args.rounds + 1):
        broker = Broker()
        broker.start()
        try:

            async def run(bootstrap: str = broker.bootstrap) -> str:
                await create_topics(bootstrap, [TOPIC], args.partitions)
                return await _round(bootstrap, args)

            print(f"round {number}: {asyncio.run(run())}", flush=True)
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
