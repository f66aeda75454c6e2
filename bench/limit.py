"""limit: the cost of one Kafka hop on this machine (``python -m bench.limit``).

A minimal aiokafka program: it reads every partition of the ingest topic (manual assignment, no
consumer group, no state) and produces each record at once to the topic named by its
``delayq-target`` header, same key, value and headers (so ``delayq-due-ms`` travels with it).
Sends are batched by the producer and never awaited one by one. It ignores due times: the bench
sends a job to it when the job is due, so its lateness is the time of one hop.

``--start-at-ms T``: connect, print ``limit: ready``, and only start reading at epoch ms T (the
burst and the drain-rate measurement give it a backlog that is due at T).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

TARGET_HEADER = "delayq-target"


async def run(
    bootstrap: str, topic: str, partitions: int, start_at_ms: int | None, fetch_wait_ms: int
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_wait_ms,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=0, max_batch_size=256 * 1024
    )
    await consumer.start()
    await producer.start()
    print("limit: ready", flush=True)
    if start_at_ms is not None:
        await asyncio.sleep(max(0.0, start_at_ms / 1000 - time.time()))
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    acks: deque[asyncio.Future[object]] = deque()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
            for records in batch.values():
                for rec in records:
                    target = next(v for k, v in rec.headers if k == TARGET_HEADER).decode()
                    acks.append(
                        await producer.send(
                            target, rec.value, key=rec.key, headers=list(rec.headers)
                        )
                    )
            while acks and acks[0].done():
                acks.popleft().result()  # a failed send stops the program: the bench sees it
            if len(acks) > 50_000:
                await asyncio.gather(*acks)
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.limit", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True, help="the ingest topic")
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--start-at-ms", type=int, default=None)
    parser.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        default=10,
        help="how long the broker may hold an empty fetch (Tansu answers 0 with nothing)",
    )
    args = parser.parse_args()
    asyncio.run(
        run(args.bootstrap, args.topic, args.partitions, args.start_at_ms, args.fetch_max_wait_ms)
    )


if __name__ == "__main__":
    main()
