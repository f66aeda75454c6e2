"""``python -m bench.brokercost``: the embedded broker's CPU at a constant produce+consume rate.

No delay queue: one producer sends ``--rate`` records/s (10 ms slices, ``--linger-ms``) to one
topic and one consumer reads them as they come. Every 5 s it prints the broker's CPU over the
last 5 s, the records stored and the consumer's Fetch requests.

Why: Tansu's Fetch lists every record batch stored in a partition whenever the partition has
records past the fetch offset (quirk 7 in app/tansu_compat.py), so at a constant rate its CPU
grows with the run's length, and grows with the number of batches, not records.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiokafka.consumer.fetcher as aiokafka_fetcher
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.broker import Broker, create_topics
from bench.workers import cpu_seconds

__all__ = ["main"]

TOPIC = "brokercost"
SLICE_S = 0.01
REPORT_EVERY_S = 5.0


class _FetchCounter:
    """Counts the Fetch requests of every aiokafka consumer in this process."""

    def __init__(self) -> None:
        self.count = 0
        original = aiokafka_fetcher.Fetcher._proc_fetch_request
        counter = self

        async def counted(fetcher: Any, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return await original(fetcher, *args, **kwargs)

        aiokafka_fetcher.Fetcher._proc_fetch_request = counted  # type: ignore[method-assign]


async def _consume(consumer: AIOKafkaConsumer, received: list[int]) -> None:
    while True:
        batch = await consumer.getmany(timeout_ms=200)
        received[0] += sum(len(records) for records in batch.values())


async def run(args: argparse.Namespace, broker: Broker, fetches: _FetchCounter) -> None:
    assert broker.pid is not None
    await create_topics(broker.bootstrap, [TOPIC], args.partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        linger_ms=args.linger_ms,
        max_batch_size=256 * 1024,
    )
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=broker.bootstrap,
        group_id="brokercost",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=args.fetch_wait_ms,
    )
    await producer.start()
    await consumer.start()
    received = [0]
    reader = asyncio.create_task(_consume(consumer, received))
    value = b"x" * 100
    started = time.monotonic()
    sent = 0
    last_t, last_cpu = started, cpu_seconds(broker.pid)
    next_report = started + REPORT_EVERY_S
    print(f"{'t (s)':>6} {'sent':>9} {'received':>9} {'broker CPU':>10} {'fetches/s':>9}")
    last_fetches = 0
    try:
        while time.monotonic() - started < args.seconds:
            due = int((time.monotonic() - started) * args.rate)
            while sent < due:
                await producer.send(TOPIC, value, partition=sent % args.partitions)
                sent += 1
            await asyncio.sleep(SLICE_S)
            now = time.monotonic()
            if now >= next_report:
                cpu = cpu_seconds(broker.pid)
                share = 100 * (cpu - last_cpu) / (now - last_t)
                rate = (fetches.count - last_fetches) / (now - last_t)
                print(
                    f"{now - started:6.0f} {sent:9,} {received[0]:9,} {share:9.0f}% {rate:9.0f}",
                    flush=True,
                )
                last_t, last_cpu, last_fetches = now, cpu, fetches.count
                next_report += REPORT_EVERY_S
    finally:
        reader.cancel()
        await consumer.stop()
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.brokercost", description=__doc__)
    parser.add_argument("--rate", type=int, default=2_000, help="records/s (default 2000)")
    parser.add_argument("--linger-ms", type=int, default=5, help="producer linger (default 5)")
    parser.add_argument("--seconds", type=int, default=60, help="run length (default 60)")
    parser.add_argument("--partitions", type=int, default=8, help="partitions (default 8)")
    parser.add_argument("--fetch-wait-ms", type=int, default=100, help="consumer max wait")
    args = parser.parse_args(argv)
    fetches = _FetchCounter()
    broker = Broker()
    broker.start()
    try:
        asyncio.run(run(args, broker, fetches))
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
