#!/usr/bin/env python3
"""Schedule (or cancel) a delayq job from librdkafka, through the `confluent-kafka` client.

Nothing here imports delayq: this is what any non-Python producer does, in the terms of
librdkafka's configuration (the same keys work in C, Go, .NET, Node, ...). One ingest record is
one command; the headers carry the contract (see the README, "Wire contract").

    python examples/schedule_confluent.py --bootstrap 127.0.0.1:9092 \\
        --target orders-reminders --delay-ms 5000 --header trace-id=42 --wait 'hello'

Without --bootstrap it uses $DELAYQ_BROKER_URL, else the embedded broker of `make run` on
127.0.0.1:$DELAYQ_EMBEDDED_PORT, else 127.0.0.1:9092 (as delayq's own client and CLI do).

--wait reads the target topic until the forwarded record of this job arrives and prints it with
its headers (the target topic must exist; --create-target creates it first).
Exit codes: 0 done, 1 delivery failed or --wait timed out, 2 bad usage or missing topic.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import uuid

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

HEADER_TARGET = "delayq-target"
HEADER_DUE_MS = "delayq-due-ms"
HEADER_DELAY_MS = "delayq-delay-ms"
HEADER_KEY = "delayq-key"
HEADER_JOB_ID = "delayq-job-id"


def default_bootstrap() -> str:
    """$DELAYQ_BROKER_URL, else 127.0.0.1:$DELAYQ_EMBEDDED_PORT, else 127.0.0.1:9092.

    delayq's own rule (app/endpoints.py), copied so that this file imports nothing of delayq.
    """
    url = os.environ.get("DELAYQ_BROKER_URL")
    if url is not None:  # kafka://k1:9092;k2:9092 as the workers read it
        return ",".join(s.strip().split("://", 1)[-1] for s in re.split(r"[;,\s]+", url) if s)
    return f"127.0.0.1:{os.environ.get('DELAYQ_EMBEDDED_PORT', '').strip() or 9092}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--bootstrap",
        default=default_bootstrap(),
        help="bootstrap servers host:port,... (default: %(default)s, from $DELAYQ_BROKER_URL, "
        "else 127.0.0.1:$DELAYQ_EMBEDDED_PORT, else 127.0.0.1:9092)",
    )
    p.add_argument(
        "--ingest-topic",
        default=os.environ.get("DELAYQ_INGEST_TOPIC") or "delayq-ingest",
        help="delayq's ingest topic (default: %(default)s, from $DELAYQ_INGEST_TOPIC)",
    )
    p.add_argument("--job-id", default=None, help="the record key (default: a random UUID)")
    p.add_argument("--target", help="topic the job is forwarded to (required unless --cancel)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--delay-ms", type=int, help="forward this many ms after the record time")
    when.add_argument("--due-ms", type=int, help="forward at this epoch time in ms")
    p.add_argument("--key", help="key of the forwarded record (default: the job id)")
    p.add_argument("value", nargs="?", help="value (UTF-8 text); same as --value")
    value = p.add_mutually_exclusive_group()
    value.add_argument("--value", dest="value_opt", help="value (UTF-8 text)")
    value.add_argument("--tombstone", action="store_true", help="forward a null value")
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a header copied to the forwarded record (repeatable; not delayq-*)",
    )
    p.add_argument("--cancel", action="store_true", help="cancel --job-id instead of scheduling")
    p.add_argument("--wait", action="store_true", help="wait for the forward and print it")
    p.add_argument("--wait-timeout-s", type=float, default=60.0, help="how long --wait waits")
    p.add_argument(
        "--create-target",
        type=int,
        metavar="PARTITIONS",
        help="create the target topic with this many partitions if it does not exist",
    )
    args = p.parse_args(argv)
    given = [args.value is not None, args.value_opt is not None, args.tombstone]
    given_value = any(given)
    if sum(given) > 1:
        p.error("give the value once: positional, --value or --tombstone")
    if args.value is None:
        args.value = args.value_opt if args.value_opt is not None else "hello from librdkafka"
    if args.cancel:
        if args.job_id is None:
            p.error("--cancel needs --job-id")
        if args.target or args.wait or args.delay_ms is not None or args.due_ms is not None:
            p.error("a cancel carries only the job id (no --target, --delay-ms, --due-ms, --wait)")
        if given_value or args.key or args.header:
            p.error("a cancel carries no value, --key or --header")
    else:
        if not args.target:
            p.error("--target is required to schedule a job")
        if args.delay_ms is None and args.due_ms is None:
            p.error("one of --delay-ms or --due-ms is required")
        if any("=" not in h or h.lower().startswith("delayq-") for h in args.header):
            p.error("--header takes NAME=VALUE, and delayq-* names are reserved")
    if args.job_id is None:
        args.job_id = uuid.uuid4().hex
    return args


Headers = list[tuple[str, str | bytes | None]]


def command_record(args: argparse.Namespace) -> tuple[bytes, bytes | None, Headers]:
    """Key, value and headers of the ingest record for this command."""
    job_id = args.job_id.encode()
    if args.cancel:  # null value and no delayq-target header
        return job_id, None, []
    headers: Headers = [(HEADER_TARGET, args.target.encode())]
    if args.due_ms is not None:
        headers.append((HEADER_DUE_MS, str(args.due_ms).encode()))
    else:
        headers.append((HEADER_DELAY_MS, str(args.delay_ms).encode()))
    if args.key is not None:
        headers.append((HEADER_KEY, args.key.encode()))
    for header in args.header:
        name, _, text = header.partition("=")
        headers.append((name, text.encode()))
    value = None if args.tombstone else args.value.encode()
    return job_id, value, headers


def topic_partitions(bootstrap: str, topic: str) -> int | None:
    """The partition count of ``topic``, or None if it does not exist (never creates it)."""
    # Without this flag a metadata request creates the topic on an auto-creating broker.
    admin = AdminClient({"bootstrap.servers": bootstrap, "allow.auto.create.topics": False})
    metadata = admin.list_topics(topic, timeout=10)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return None
    return len(found.partitions)


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions)])
    try:
        futures[topic].result(30)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def start_reading(bootstrap: str, topic: str, partitions: int) -> Consumer:
    """A consumer positioned at (or before) the current end of every partition of ``topic``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"delayq-example-{uuid.uuid4().hex}",  # assign() only: never joins
            "enable.auto.commit": False,
        }
    )
    # Explicit offsets taken now, before the job is scheduled: a forward that lands before the
    # first poll is still read. Older records that show up are skipped by job id below.
    assignment = []
    for p in range(partitions):
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        assignment.append(TopicPartition(topic, p, high if high >= 0 else OFFSET_END))
    consumer.assign(assignment)
    return consumer


def wait_for_forward(consumer: Consumer, job_id: bytes, timeout_s: float) -> Message | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        error = msg.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                continue
            raise KafkaException(error)
        if (HEADER_JOB_ID, job_id) in header_list(msg):
            return msg
    return None


def header_list(msg: Message) -> Headers:
    headers = msg.headers() or []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def show(label: str, msg: Message, headers: Headers | None = None) -> None:
    _kind, ts = msg.timestamp()
    print(f"{label}: {msg.topic()}[{msg.partition()}]@{msg.offset()} timestamp={ts}")
    print(f"  key:   {msg.key()!r}")
    print(f"  value: {msg.value()!r}")
    for name, value in header_list(msg) or headers or []:
        print(f"  header {name}: {value!r}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    partitions = topic_partitions(args.bootstrap, args.ingest_topic)
    if partitions is None:
        # Producing now would let an auto-creating broker make it with its default partition
        # count, which the workers' DELAYQ_PARTITIONS must match.
        print(
            f"ingest topic {args.ingest_topic!r} does not exist: create it (and the fired topic) "
            "with DELAYQ_PARTITIONS partitions before scheduling",
            file=sys.stderr,
        )
        return 2
    consumer = None
    if args.wait:
        if args.create_target:
            create_topic(args.bootstrap, args.target, args.create_target)
        target_partitions = topic_partitions(args.bootstrap, args.target)
        if target_partitions is None:
            print(f"target topic {args.target!r} does not exist", file=sys.stderr)
            return 2
        consumer = start_reading(args.bootstrap, args.target, target_partitions)
    elif args.create_target and args.target:
        create_topic(args.bootstrap, args.target, args.create_target)

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            # Java's and aiokafka's partitioner puts each command in its job's home partition.
            # librdkafka's default (consistent_random) works too, one hop later: delayq moves
            # what lands elsewhere (README, "Producing from any client").
            "partitioner": "murmur2_random",
            "acks": "all",
            "allow.auto.create.topics": False,
        }
    )
    delivered: list[Message] = []
    failed: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failed.append(err)
        else:
            delivered.append(msg)

    key, value, headers = command_record(args)
    producer.produce(
        args.ingest_topic, value=value, key=key, headers=headers, on_delivery=on_delivery
    )
    producer.flush(30)
    if failed or not delivered:
        print(f"delivery failed: {failed[0] if failed else 'timed out'}", file=sys.stderr)
        return 1
    what = "cancel" if args.cancel else "schedule"
    show(f"{what} of job {args.job_id} written", delivered[0], headers)

    if consumer is None:
        return 0
    try:
        forwarded = wait_for_forward(consumer, key, args.wait_timeout_s)
    finally:
        consumer.close()
    if forwarded is None:
        print(f"no forward of job {args.job_id} within {args.wait_timeout_s} s", file=sys.stderr)
        return 1
    show("forwarded", forwarded)
    due = int(dict(header_list(forwarded))[HEADER_DUE_MS] or 0)
    print(f"  written {forwarded.timestamp()[1] - due} ms after its due time (worker's clock)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
