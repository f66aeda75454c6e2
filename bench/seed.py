"""seed: the seed service's algorithm, written minimally (``python -m bench.seed``).

The seed service keeps one topic per fixed delay and one consumer group over them. For each
record, in partition order: if ``now - record timestamp >= the topic's delay`` it forwards the
record (to its ``delayq-target``, same key, value and headers); otherwise it seeks the partition
back to that record and the whole consumer sleeps 1 s before polling again.

The bench gives it topics ``<prefix>-seed-<N>s`` with delays of N = 1..10 s (``--topic
NAME=DELAY_MS``). A job whose requested delay is d goes to the topic of round(d) seconds (the
seed can only honour whole-second fixed delays), so its due time, sent along in
``delayq-due-ms``, is its record timestamp + that topic's delay. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

TARGET_HEADER = "delayq-target"
SLEEP_S = 1.0


async def run(bootstrap: str, group: str, delays: dict[str, int]) -> None:
    consumer = AIOKafkaConsumer(
        *delays,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        # The embedded broker holds every JoinGroup for session_timeout / 2 (delayq uses the same).
        session_timeout_ms=2_000,
        heartbeat_interval_ms=500,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=0, max_batch_size=256 * 1024
    )
    await consumer.start()
    await producer.start()
    print("seed: ready", flush=True)
    acks: deque[asyncio.Future[object]] = deque()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1_000)
            now = time.time_ns() // 1_000_000
            blocked = False
            for tp, records in batch.items():
                delay = delays[tp.topic]
                for rec in records:
                    if now - rec.timestamp < delay:
                        consumer.seek(tp, rec.offset)  # not due: read it again after the sleep
                        blocked = True
                        break
                    target = next(v for k, v in rec.headers if k == TARGET_HEADER).decode()
                    acks.append(
                        await producer.send(
                            target, rec.value, key=rec.key, headers=list(rec.headers)
                        )
                    )
            while acks and acks[0].done():
                acks.popleft().result()
            if blocked:
                await asyncio.sleep(SLEEP_S)
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.seed", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", action="append", required=True, metavar="NAME=DELAY_MS")
    args = parser.parse_args()
    delays = {name: int(ms) for name, ms in (t.split("=", 1) for t in args.topic)}
    asyncio.run(run(args.bootstrap, args.group, delays))


if __name__ == "__main__":
    main()
