"""Fuzzing a real worker's ingest topic: 300 generated records, every one accounted for.

One batch of schedules, replacements, cancels and contract-breaking records (generated once from
a fixed seed, so every run sends the same batch) goes to the ingest topic of one worker. Then:

- the last valid command of each job id decides: a schedule is forwarded exactly as the
  contract says (key, value, headers, topic, not early); a cancel leaves nothing to forward;
- every record that breaks the contract is on the dead-letter topic, unchanged, with a
  ``delayq-error`` reason; nothing else is;
- the worker's counters say it applied exactly these commands, and nothing stays pending;
- the worker is still healthy and forwards a fresh job.

Superseded schedules (a later valid command for the same id follows) are due ten minutes out, so
whether they were replaced or cancelled in time is not a race: they must never fire, and "nothing
pending" at the end proves they are gone. Final schedules are due in the past or within a few
seconds. No fixed sleeps: every wait polls for its condition.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from app.embedded import EmbeddedBroker
from app.times import MAX_DUE_MS, now_ms
from tests.conftest import WorkerFactory
from tests.support import Kafka, Namespace, Worker, create_topics

pytestmark = pytest.mark.integration

SEED = 20_251_121
RECORDS = 300
#: Job ids shared by schedules, cancels and bad records, so that ids see several commands.
POOL = 60
#: Superseded schedules are due this far out: they must be replaced or cancelled, never fired.
SUPERSEDED_MS = 600_000
#: Final schedules are due at most this far out.
SOON_MS = 3_000
WAIT_S = 90.0
#: One record each, at a random place in the batch.
RARE = ("huge-number", "huge-header-name", "many-headers", "newline-target")

Header = tuple[str, bytes | None]
Records = list[ConsumerRecord[bytes, bytes]]


@dataclass
class Sent:
    """One generated ingest record and what the contract says it is."""

    kind: str  # "schedule", "cancel" or the name of the rule an invalid record breaks
    key: bytes | None
    value: bytes | None
    headers: list[Header]
    timestamp_ms: int
    # Schedules only:
    target: str = ""
    due_ms: int = 0
    fwd_key: bytes | None = None
    foreign: list[Header] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.kind in ("schedule", "cancel")


# --- the batch ----------------------------------------------------------------------------------


class Generator:
    """The batch, from ``random.Random(SEED)``: same records (up to the clock) on every run."""

    def __init__(self, ns: Namespace, targets: list[str], now: int) -> None:
        self.rng = random.Random(SEED)
        self.ns = ns
        self.targets = targets
        self.now = now
        self.pool = [self._job_id(i) for i in range(POOL)]
        self.unique = 0

    def _job_id(self, i: int) -> bytes:
        rng = self.rng
        match i % 4:
            case 0:
                return rng.randbytes(rng.randint(1, 40))  # binary, often not UTF-8
            case 1:
                return f"{self.ns.prefix}-job-{i}-é".encode()
            case 2:
                return b"j" * 1_000 + str(i).encode()  # near the 1024-byte limit
            case _:
                return f"id {i}/with?odd=chars".encode()

    def fresh_key(self) -> bytes:
        self.unique += 1
        return f"{self.ns.prefix}-bad-{self.unique}".encode()

    def _bytes(self, most: int = 40) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, most))

    def foreign_headers(self) -> list[Header]:
        rng = self.rng
        names = ["trace-id", "content-type", "x", "", "é-name", "Delayq-Target", "DELAYQ-KEY"]
        headers: list[Header] = []
        for _ in range(rng.randint(0, 4)):
            name = rng.choice(names) if rng.random() < 0.7 else f"h{rng.randint(0, 9)}"
            value = rng.choice([None, b"", self._bytes(), "ünïcode".encode()])
            headers.append((name, value))
        if headers and rng.random() < 0.2:
            headers.append(headers[0])  # a repeated name
        return headers

    def reserved_headers(self) -> list[Header]:
        """``delayq-`` headers that are not the contract's: dropped, never refused."""
        rng = self.rng
        choices: list[Header] = [
            ("delayq-job-id", b"stale"),
            ("delayq-error", b"an old error"),
            (f"delayq-x{rng.randint(0, 9)}", self._bytes(8)),
        ]
        return rng.sample(choices, rng.randint(0, 2))

    def mix(self, contract: list[Header]) -> list[Header]:
        """``contract`` headers spread among foreign and reserved ones."""
        headers = self.foreign_headers()
        for item in [*contract, *self.reserved_headers()]:
            headers.insert(self.rng.randint(0, len(headers)), item)
        return headers

    def schedule(self, key: bytes, final: bool) -> Sent:
        rng = self.rng
        target = rng.choice(self.targets)
        timestamp = self.now - (rng.randint(0, 3_600_000) if rng.random() < 0.3 else 0)
        if final:
            due = rng.choice([self.now - rng.randint(0, 86_400_000), self.now])
            due = max(due, timestamp) if rng.random() < 0.5 else due
            due = due + rng.randint(0, SOON_MS) if rng.random() < 0.5 else due
        else:
            due = self.now + SUPERSEDED_MS + rng.randint(0, 60_000)
        if due >= timestamp and rng.random() < 0.5:
            timing: Header = ("delayq-delay-ms", str(due - timestamp).encode())
        else:
            timing = ("delayq-due-ms", str(due).encode())
        contract: list[Header] = [("delayq-target", target.encode()), timing]
        fwd_key = rng.choice([None, None, b"", self._bytes(16) or b"k"])
        if fwd_key is not None:
            contract.append(("delayq-key", fwd_key))
        headers = self.mix(contract)
        value = rng.choice([None, b"", self._bytes(200), rng.randbytes(100_000)])
        foreign = [h for h in headers if not h[0].startswith("delayq-")]
        return Sent("schedule", key, value, headers, timestamp, target, due, fwd_key, foreign)

    def cancel(self, key: bytes) -> Sent:
        headers = self.foreign_headers() + self.reserved_headers()
        return Sent("cancel", key, None, headers, self.now)

    def invalid(self, kind: str) -> Sent:
        """A record that breaks one rule of the contract (named ``kind``)."""
        rng = self.rng
        key: bytes | None = rng.choice(self.pool) if rng.random() < 0.5 else self.fresh_key()
        value: bytes | None = self._bytes(50)
        contract: list[Header] = [
            ("delayq-target", rng.choice(self.targets).encode()),
            ("delayq-due-ms", str(self.now).encode()),
        ]
        if kind in RARE:  # own keys: a crash there must not hide behind a pool id's state
            key = self.fresh_key()
            contract = self._rare(kind, contract)
        elif kind.endswith("-key"):
            key = {"no-key": None, "empty-key": b""}.get(kind, b"k" * rng.choice([1_025, 50_000]))
        elif kind == "bad-cancel":
            value = None
            contract = [rng.choice([("delayq-key", b"k"), contract[1], ("delayq-delay-ms", b"1")])]
        else:
            contract = self._broken(kind, contract)
        headers = self.mix(contract) if kind != "many-headers" else contract
        return Sent(kind, key, value, headers, self.now)

    def _broken(self, kind: str, contract: list[Header]) -> list[Header]:
        """``contract`` (target, due) with one rule broken."""
        rng = self.rng
        target, due = contract
        match kind:
            case "no-target":
                return [due]
            case "bad-target":
                bad = rng.choice([b"bad topic", b"a/b", b"", b".", b"..", b"t" * 250, b"\xff\xfe"])
                return [("delayq-target", bad), due]
            case "internal-target":
                internal = [self.ns.ingest, self.ns.fired, f"{self.ns.app_id}-jobs-changelog"]
                return [("delayq-target", rng.choice(internal).encode()), due]
            case "both-times":
                return [target, due, ("delayq-delay-ms", b"0")]
            case "no-time":
                return [target]
            case "bad-number":
                bad = rng.choice(
                    [b"-5", b"1e3", b"soon", b"", b"12.5", "١٢".encode(), b"\xff", b"+5", b"0x10"]
                )
                return [target, (rng.choice(["delayq-due-ms", "delayq-delay-ms"]), bad)]
            case "out-of-range":
                out = [
                    ("delayq-due-ms", str(MAX_DUE_MS + 1).encode()),
                    ("delayq-due-ms", b"99999999999999999999"),
                    ("delayq-delay-ms", str(MAX_DUE_MS).encode()),
                ]
                return [target, rng.choice(out)]
            case "repeated":
                return [target, due, rng.choice(contract)]
        raise AssertionError(kind)

    def _rare(self, kind: str, contract: list[Header]) -> list[Header]:
        """Records that crashed the ingest agent, or were accepted though they break the rules."""
        target, due = contract
        match kind:
            case "huge-number":  # beyond int()'s 4300-digit limit
                return [target, ("delayq-due-ms", b"1" * 5_000)]
            case "huge-header-name":  # the table stores a header name's length as a u16
                return [target, due, ("h" * 70_000, b"x")]
            case "many-headers":  # ... and the header count as a u16
                return [target, due, *[("h", b"")] * 65_536]
            case "newline-target":  # "out\n": a regex "$" matches before a final newline
                assert target[1] is not None
                return [("delayq-target", target[1] + b"\n"), due]
        raise AssertionError(kind)

    def batch(self) -> list[Sent]:
        rng = self.rng
        common = [
            "no-key",
            "empty-key",
            "long-key",
            "no-target",
            "bad-target",
            "internal-target",
            "both-times",
            "no-time",
            "bad-number",
            "out-of-range",
            "repeated",
            "bad-cancel",
        ]
        plan: list[tuple[str, bytes | None]] = []
        for _ in range(RECORDS - len(RARE)):
            roll = rng.random()
            if roll < 0.45:
                plan.append(("schedule", rng.choice(self.pool)))
            elif roll < 0.6:
                plan.append(("cancel", rng.choice(self.pool)))
            else:
                plan.append((rng.choice(common), None))
        for kind in RARE:
            plan.insert(rng.randint(0, len(plan)), (kind, None))
        last_valid = {
            key: i for i, (kind, key) in enumerate(plan) if kind in ("schedule", "cancel")
        }
        batch: list[Sent] = []
        for i, (kind, key) in enumerate(plan):
            if kind == "schedule":
                assert key is not None
                batch.append(self.schedule(key, final=last_valid[key] == i))
            elif kind == "cancel":
                assert key is not None
                batch.append(self.cancel(key))
            else:
                batch.append(self.invalid(kind))
        return batch


# --- what the contract says the worker must do with the batch -----------------------------------


def expected_counters(batch: list[Sent]) -> dict[str, int]:
    """The agent's counters after applying ``batch`` to an empty table (nothing fires early)."""
    pending: set[bytes] = set()
    counts = Counter[str]()
    for sent in batch:
        assert sent.key is not None or not sent.valid
        if sent.kind == "schedule":
            assert sent.key is not None
            counts["scheduled"] += 1
            counts["replaced"] += sent.key in pending
            pending.add(sent.key)
        elif sent.kind == "cancel":
            assert sent.key is not None
            counts["cancelled" if sent.key in pending else "cancel_unknown"] += 1
            pending.discard(sent.key)
        else:
            counts["dead_lettered"] += 1
    names = ["scheduled", "replaced", "cancelled", "cancel_unknown", "dead_lettered"]
    return {name: counts[name] for name in names}


def final_schedules(batch: list[Sent]) -> dict[bytes, Sent]:
    """Job id -> its final schedule, for ids whose last valid command is a schedule."""
    last: dict[bytes, Sent] = {}
    for sent in batch:
        if sent.valid:
            assert sent.key is not None
            last[sent.key] = sent
    return {key: sent for key, sent in last.items() if sent.kind == "schedule"}


def forwarded_form(sent: Sent) -> tuple[str, bytes | None, bytes | None, list[Header]]:
    """Topic, key, value and headers of the forward of schedule ``sent``."""
    assert sent.key is not None
    stable: list[Header] = [
        ("delayq-job-id", sent.key),
        ("delayq-due-ms", str(sent.due_ms).encode()),
    ]
    key = sent.key if sent.fwd_key is None else sent.fwd_key
    return sent.target, key, sent.value, [*sent.foreign, *stable]


def _headers(record: ConsumerRecord[bytes, bytes]) -> list[Header]:
    return [(name, value) for name, value in record.headers]


def _job_id(record: ConsumerRecord[bytes, bytes]) -> bytes | None:
    return next((v for n, v in reversed(record.headers) if n == "delayq-job-id"), None)


# --- the worker ---------------------------------------------------------------------------------


def assert_alive(worker: Worker) -> None:
    """Fail at once, with the worker's last errors, if its process has exited."""
    assert worker.proc is not None
    if worker.proc.poll() is not None:
        lines = worker.log_since_start().splitlines()
        errors = [line[:300] for line in lines if "ERROR" in line or "CRITICAL" in line]
        raise AssertionError(f"the worker exited ({worker.proc.returncode}): {errors[-5:]}")


def http_get(worker: Worker, path: str) -> tuple[int, Any]:
    assert_alive(worker)
    url = f"http://127.0.0.1:{worker.web_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
    except OSError:  # refused or reset: the next call tells whether the worker exited
        return 0, {}


async def poll(
    probe: Callable[[], Any], done: Callable[[Any], bool], timeout: float = WAIT_S
) -> Any:
    """Call ``probe`` until ``done`` holds for its answer; the last answer either way."""
    deadline = time.monotonic() + timeout
    answer = probe()
    while not done(answer) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        answer = probe()
    return answer


async def send_batch(kafka: Kafka, topic: str, batch: list[Sent]) -> None:
    """Produce in order (one producer: per-partition order is batch order), then await acks."""
    futures = [
        await kafka.producer.send(
            topic,
            sent.value,
            key=sent.key,
            headers=list(sent.headers),
            timestamp_ms=sent.timestamp_ms,
        )
        for sent in batch
    ]
    await asyncio.gather(*futures)


async def test_every_fuzzed_ingest_record_is_forwarded_or_dead_lettered_as_the_contract_says(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory, broker: EmbeddedBroker
) -> None:
    # Given a worker, two target topics and a generated batch of ingest records
    targets = [ns.target("a"), ns.target("b")]
    await create_topics(broker.bootstrap, targets, 3)
    worker = start_worker()
    batch = Generator(ns, targets, now_ms()).batch()
    finals = final_schedules(batch)
    invalid = [sent for sent in batch if not sent.valid]
    kinds = Counter(sent.kind for sent in batch)
    assert kinds["schedule"] > 50 and kinds["cancel"] > 20 and len(invalid) > 80, kinds
    assert 20 < len(finals) < POOL

    # When it is produced to the ingest topic
    await send_batch(kafka, ns.ingest, batch)

    # Then the worker applies exactly these commands (its counters say so) ...
    want = expected_counters(batch)

    def counters() -> dict[str, int]:
        status, stats = http_get(worker, "/stats")
        assert status in (0, 200, 503), stats
        return {name: stats["counters"][name] for name in want} if status == 200 else {}

    applied = await poll(counters, lambda got: got == want)
    # ... every final schedule is forwarded as the contract says, and nothing else is ...
    records = await kafka.collect(
        targets, lambda rs: {_job_id(r) for r in rs} >= set(finals), timeout=WAIT_S
    )
    by_id: dict[bytes | None, Records] = {}
    for record in records:
        by_id.setdefault(_job_id(record), []).append(record)
    unexpected = set(by_id) - set(finals)
    assert not unexpected, f"forwarded, but superseded or never scheduled: {unexpected}"
    never = set(finals) - set(by_id)
    assert not never, f"{len(never)} final schedules never forwarded, e.g. {min(never)!r}"
    for job_id, copies in by_id.items():
        assert job_id is not None
        topic, key, value, headers = forwarded_form(finals[job_id])
        for record in copies:  # at least once: copies must be identical
            assert (record.topic, record.key, record.value) == (topic, key, value), job_id
            assert _headers(record) == headers, job_id
            assert record.timestamp >= finals[job_id].due_ms, "forwarded early"
    # ... every bad record is dead-lettered unchanged with a reason, and only those
    assert_alive(worker)
    dead = await kafka.collect([ns.dead_letters], lambda rs: len(rs) >= len(invalid), timeout=30)
    reasons: dict[tuple[Any, ...], list[bytes]] = {}
    for record in dead:
        *original, (error_name, reason) = _headers(record)
        assert error_name == "delayq-error" and reason and reason.strip(), record.key
        reasons.setdefault((record.key, record.value, tuple(original)), []).append(reason)
    problems = []
    for sent in invalid:
        why = reasons.get((sent.key, sent.value, tuple(sent.headers)), [])
        if not why:
            problems.append(f"{sent.kind}: not dead-lettered (unchanged, with a reason)")
        elif any(reason.startswith(b"forward to") for reason in why):
            problems.append(f"{sent.kind}: accepted, dead-lettered only after failed forwards")
    assert not problems, sorted(problems)
    want_dead = Counter((s.key, s.value, tuple(s.headers)) for s in invalid)
    assert Counter({k: len(v) for k, v in reasons.items()}) == want_dead, "unexpected dead letters"
    assert applied == want, "the worker's counters differ from the commands sent"
    # ... and no job is left: superseded ones were replaced or cancelled, final ones removed
    pending = await poll(lambda: http_get(worker, "/stats")[1].get("pending"), lambda n: n == 0)
    assert pending == 0

    # And the worker is still healthy and forwards a fresh job
    status, health = http_get(worker, "/health")
    assert (status, health.get("status")) == (200, "ok"), health
    marker = f"{ns.prefix}-marker".encode()
    await kafka.send(
        ns.ingest, marker, b"m", [("delayq-target", targets[0].encode()), ("delayq-delay-ms", b"0")]
    )
    after = await kafka.collect([targets[0]], lambda rs: any(_job_id(r) == marker for r in rs))
    assert any(_job_id(r) == marker for r in after), "the marker job was not forwarded"
