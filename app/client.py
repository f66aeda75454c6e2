"""The Python client: schedule and cancel delayed Kafka records from any Python service.

It only writes ingest records (README, "Wire contract") with aiokafka; it needs no worker code,
and imports nothing of delayq but ``app.names``, ``app.durations``, ``app.times``, ``app.errors``,
``app.endpoints``, ``app.outcomes``, ``app.recurrence`` and ``app.rule_fields`` (and
``app.settings``, lazily, for the ``DELAYQ_*`` defaults when an argument is omitted)::

    async with AsyncDelayQueue(bootstrap_servers="k1:9092") as queue:
        job = await queue.schedule(b"remind", target="reminders", delay="30m", key=b"user-7")
        await queue.cancel(job.job_id)

    with DelayQueue() as queue:  # plain scripts: an event loop runs in a background thread
        queue.delay(b"ping", "90s", target="pings")  # go-zero's Delay(body, d)
        queue.at(b"report", "2030-05-01T12:00:00Z", target="reports")  # go-zero's At(body, t)
        queue.cron(b"standup", "0 9 * * 1-5", target="chat", timezone="Europe/Berlin")
        queue.every(b"tick", "30s", target="ticks", job_id="ticker")  # cancel("ticker") ends it

Before its first command a client checks, without creating anything, that the ingest topic
exists and is delayq's: it has the partition count of the jobs table's changelog topic, which only
delayq's workers create. Otherwise it raises :class:`~app.errors.IngestTopicError` and writes
nothing (a broker that auto-creates topics would create a mistyped ingest topic that no worker
reads, and every job sent there would be lost).

Every call returns once the broker has acknowledged the record (acks=all): the command is then
durable. Arguments are validated before anything is sent (``ValueError`` naming the argument). A
broker that cannot be reached, or does not answer within ``request_timeout`` seconds, raises
:class:`~app.errors.BrokerUnavailable`; the command may or may not have been written then, and
sending it again is safe when the job id is known (a schedule with the same id replaces the job,
a second cancel does nothing), so pass ``job_id=`` to make retries exact.

Commands go out with Kafka's default key partitioner (murmur2, as in the Java client), which puts
them in their job's home partition: no extra hop (app/moving.py), whichever client scheduled it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

from app import names
from app.durations import Duration, Moment, parse_duration_ms, parse_time_ms
from app.endpoints import bootstrap_list, default_bootstrap, default_web_url
from app.errors import ApiUnavailable, BrokerUnavailable, DelayqError, IngestTopicError
from app.names import MAX_JOB_ID_BYTES
from app.outcomes import CancelOutcome
from app.recurrence import Rule
from app.rule_fields import check_rule, first_occurrence_problem, rule_headers
from app.times import MAX_DUE_MS, ms_to_datetime, now_ms

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT_S",
    "MAX_JOB_ID_BYTES",
    "AsyncDelayQueue",
    "Data",
    "DelayQueue",
    "Headers",
    "ScheduledJob",
    "checked_topic",
    "partition_counts",
]

#: How long connecting, and each command, may wait for the broker.
DEFAULT_REQUEST_TIMEOUT_S = 10.0

#: A key, value or header value: ``str`` is sent UTF-8 encoded.
Data = bytes | bytearray | memoryview | str
#: Headers of the forwarded record: a mapping, or ``(name, value)`` pairs (names may repeat).
Headers = Mapping[str, Data] | Iterable[tuple[str, Data]]

_T = TypeVar("_T")
_P = ParamSpec("_P")
_LOG_APPEND_TIME = 1
#: Extra time a sync call waits for its event loop beyond the bounds the async calls keep.
_SYNC_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class ScheduledJob:
    """A job the broker has acknowledged: its id, and when the worker will forward it."""

    job_id: str
    due_ms: int

    @property
    def due_at(self) -> datetime:
        """The due time as an aware UTC datetime."""
        return ms_to_datetime(self.due_ms)


# --- validation (everything here runs before a connection is made) ----------------------------


def checked_topic(name: object, argument: str) -> str:
    """``name`` if it is a valid Kafka topic name, else ``ValueError`` naming ``argument``."""
    if not isinstance(name, str) or not names.valid_topic_name(name):
        raise ValueError(
            f"{argument}: {name!r} is not a valid Kafka topic name "
            "(1-249 characters of a-z, A-Z, 0-9, '.', '_', '-')"
        )
    return name


def _data(value: object, argument: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return value.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(f"{argument}: not encodable as UTF-8 ({exc.reason})") from None
    raise ValueError(f"{argument}: expected bytes or str, not {type(value).__name__}")


def _job_id(job_id: object) -> bytes:
    if not isinstance(job_id, str):
        raise ValueError(f"job_id: expected a str, not {type(job_id).__name__}")
    encoded = _data(job_id, "job_id")
    if not encoded:
        raise ValueError("job_id: must not be empty")
    if len(encoded) > MAX_JOB_ID_BYTES:
        raise ValueError(f"job_id: longer than {MAX_JOB_ID_BYTES} bytes (UTF-8)")
    return encoded


def _headers(headers: Headers | None) -> list[tuple[str, bytes]]:
    if headers is None:
        return []
    if isinstance(headers, str | bytes):
        raise ValueError("headers: expected a mapping or (name, value) pairs")
    pairs: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers
    out: list[tuple[str, bytes]] = []
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"headers: expected (name, value) pairs, got {pair!r}")
        name, value = pair
        if not isinstance(name, str) or not name:
            raise ValueError(f"headers: a header name must be a non-empty str, got {name!r}")
        if name.startswith(names.HEADER_PREFIX):
            raise ValueError(
                f"headers: {name!r}: the {names.HEADER_PREFIX!r} prefix is reserved for delayq "
                "(use the target, delay, at and key arguments)"
            )
        out.append((name, _data(value, f"headers[{name!r}]")))
    return out


def _when(
    delay: Duration | None, at: Moment | None, rule: Rule | None
) -> tuple[int | None, int | None]:
    """``(delay_ms, due_ms)``: exactly one of them is set. A recurring job given neither
    starts at the rule's first occurrence after now."""
    if delay is None and at is None and rule is not None:
        return None, rule.first_after(now_ms())
    if (delay is None) == (at is None):
        if delay is not None:
            raise ValueError("give exactly one of delay= or at= (got both)")
        raise ValueError(
            "give exactly one of delay= or at= (got neither), or cron= or every= for a "
            "recurring job"
        )
    if delay is not None:
        try:
            return parse_duration_ms(delay), None
        except ValueError as exc:
            raise ValueError(f"delay: {exc}") from None
    assert at is not None
    try:
        return None, parse_time_ms(at)
    except ValueError as exc:
        raise ValueError(f"at: {exc}") from None


def _text(value: object, argument: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{argument}: expected a str, not {type(value).__name__}")
    return value


def _rule(
    cron: str | None, timezone: str | None, every: Duration | None, until: Moment | None
) -> Rule | None:
    """The recurring rule of a schedule (None: a one-shot job), checked as the worker will."""
    try:
        every_ms = None if every is None else parse_duration_ms(every)
    except ValueError as exc:
        raise ValueError(f"every: {exc}") from None
    try:
        until_ms = None if until is None else parse_time_ms(until)
    except ValueError as exc:
        raise ValueError(f"until: {exc}") from None
    rule, problems = check_rule(
        _text(cron, "cron"), every_ms, _text(timezone, "timezone"), until_ms
    )
    if problems:
        raise ValueError("; ".join(f"{p.field}: {p.message}" for p in problems))
    return rule


def _delayed_ms(delay_ms: int, timestamp_ms: int) -> int:
    if timestamp_ms + delay_ms > MAX_DUE_MS:
        raise ValueError("delay: now + delay is beyond 9999-12-31T23:59:59.999Z")
    return timestamp_ms + delay_ms


def _check_first(rule: Rule | None, first_ms: int) -> None:
    """A series must start by year 9999 and not after its end (else the worker refuses it)."""
    problem = None if rule is None else first_occurrence_problem(rule, first_ms)
    if problem is not None:
        raise ValueError(f"{problem.field}: {problem.message}")


@dataclass(frozen=True, slots=True)
class _Schedule:
    """A validated schedule command, ready to be written."""

    job_id: str
    value: bytes | None
    headers: list[tuple[str, bytes]]
    delay_ms: int | None
    due_ms: int | None
    rule: Rule | None = None


def _schedule(
    ingest_topic: str,
    value: Data | None,
    target: str,
    delay: Duration | None,
    at: Moment | None,
    key: Data | None,
    job_id: str | None,
    headers: Headers | None,
    rule: Rule | None = None,
) -> _Schedule:
    if checked_topic(target, "target") == ingest_topic:
        raise ValueError(f"target: {target!r} is the ingest topic of delayq itself")
    job = uuid.uuid4().hex if job_id is None else job_id
    _job_id(job)
    delay_ms, due_ms = _when(delay, at, rule)
    # A delay counts from the record's timestamp: checked from now here, and again when sent.
    first_ms = due_ms if due_ms is not None else _delayed_ms(delay_ms or 0, now_ms())
    _check_first(rule, first_ms)
    out = _headers(headers)
    out.append((names.HEADER_TARGET, target.encode()))
    if due_ms is not None:
        out.append((names.HEADER_DUE_MS, str(due_ms).encode()))
    else:
        out.append((names.HEADER_DELAY_MS, str(delay_ms).encode()))
    if key is not None:
        out.append((names.HEADER_KEY, _data(key, "key")))
    if rule is not None:
        out.extend(rule_headers(rule))
    encoded = None if value is None else _data(value, "value")
    return _Schedule(job, encoded, out, delay_ms, due_ms, rule)


# --- topics, looked at without creating them -----------------------------------------------


async def partition_counts(client: Any, topics: Iterable[str]) -> dict[str, int | None]:
    """The partition count of each topic, None for a topic that does not exist.

    ``client`` is a started ``aiokafka.AIOKafkaClient`` (``AIOKafkaProducer.client``). aiokafka's
    own metadata requests (a producer's first send, ``AIOKafkaAdminClient.describe_topics``)
    allow auto-creation: a broker that auto-creates topics, as Tansu and Kafka's defaults do,
    would create every topic asked about. This one forbids it (Metadata v4+, Kafka 0.11+).
    A broker error other than "unknown topic" is raised as the matching ``KafkaError``.
    """
    wanted = list(topics)
    request = MetadataRequest(wanted, allow_auto_topic_creation=False)
    response = await client.send(client.get_random_node(), request)
    counts: dict[str, int | None] = dict.fromkeys(wanted)
    for topic in response.to_object()["topics"]:
        code = topic["error_code"]
        if code == UnknownTopicOrPartitionError.errno:
            continue
        if code and not topic["partitions"]:
            raise for_code(code)(f"topic {topic['topic']!r}")
        counts[topic["topic"]] = len(topic["partitions"])
    return counts


# --- the asyncio client ---------------------------------------------------------------------


class AsyncDelayQueue:
    """Schedules and cancels jobs by writing to delayq's ingest topic (asyncio).

    ``bootstrap_servers`` defaults to ``DELAYQ_BROKER_URL``, else the embedded broker of
    ``make run`` (127.0.0.1, port ``DELAYQ_EMBEDDED_PORT`` or 9092); ``ingest_topic`` and
    ``app_id`` (the workers' ``DELAYQ_APP_ID``, which names their jobs changelog topic) default to
    ``DELAYQ_INGEST_TOPIC`` and ``DELAYQ_APP_ID`` (``app.settings``). ``producer_options`` go to
    ``AIOKafkaProducer`` (e.g. ``security_protocol``, ``sasl_mechanism``, ``ssl_context``).
    Connects, and checks the ingest topic, on ``start()``, ``async with`` or the first command;
    ``close()`` flushes and disconnects.
    """

    def __init__(
        self,
        bootstrap_servers: str | Iterable[str] | None = None,
        ingest_topic: str | None = None,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
        client_id: str = "delayq-client",
        producer_options: Mapping[str, Any] | None = None,
        app_id: str | None = None,
        api_url: str | None = None,
    ) -> None:
        if ingest_topic is None or app_id is None:
            from app.settings import load_settings  # only now: it needs pydantic

            settings = load_settings()
            if ingest_topic is None:
                ingest_topic = settings.ingest_topic
            if app_id is None:
                app_id = settings.app_id
        if bootstrap_servers is None:
            bootstrap_servers = default_bootstrap()
        if not request_timeout > 0:
            raise ValueError(f"request_timeout: must be positive, got {request_timeout!r}")
        self.bootstrap_servers = bootstrap_list(bootstrap_servers)
        self.ingest_topic = checked_topic(ingest_topic, "ingest_topic")
        if not isinstance(app_id, str) or not app_id:
            raise ValueError(f"app_id: expected a non-empty str, got {app_id!r}")
        self.app_id = app_id
        self.request_timeout = float(request_timeout)
        #: Any worker's HTTP API, for ``cancel(..., wait=True)``.
        self.api_url = (api_url or default_web_url()).rstrip("/")
        self._client_id = client_id
        self._options = dict(producer_options or {})
        self._producer: Any = None
        self._start_lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        servers = ",".join(self.bootstrap_servers)
        return f"<AsyncDelayQueue {servers} ingest={self.ingest_topic!r}>"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def _where(self) -> str:
        return f"the Kafka broker at {','.join(self.bootstrap_servers)}"

    async def start(self) -> None:
        """Connect, or :class:`BrokerUnavailable` within ``request_timeout`` seconds."""
        await self._started()

    async def _started(self) -> Any:
        if self._closed:
            raise RuntimeError("this delay queue is closed")
        async with self._start_lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    **{
                        "client_id": self._client_id,
                        # Tansu (the embedded broker) has no idempotent producers.
                        "enable_idempotence": False,
                        **self._options,
                        "bootstrap_servers": self.bootstrap_servers,
                        "acks": "all",
                        "request_timeout_ms": int(self.request_timeout * 1000),
                    }
                )
                try:
                    await asyncio.wait_for(producer.start(), self.request_timeout)
                    # Before the producer ever names the topic: its metadata request would
                    # create it on a broker that auto-creates topics.
                    check = self._check_ingest(producer.client)
                    await asyncio.wait_for(check, self.request_timeout)
                except BaseException as exc:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(producer.stop(), self.request_timeout)
                    if isinstance(exc, IngestTopicError):
                        raise
                    if isinstance(exc, TimeoutError):
                        why = f"no answer within {self.request_timeout:g}s"
                    elif isinstance(exc, KafkaError | OSError):
                        why = "connection failed: is it running, is the address right?"
                    else:
                        raise
                    raise BrokerUnavailable(f"cannot reach {self._where} ({why})") from exc
                self._producer = producer
        return self._producer

    async def _check_ingest(self, client: Any) -> None:
        """:class:`IngestTopicError` unless the ingest topic exists and is delayq's."""
        changelog = names.changelog_topic(self.app_id)
        if self.ingest_topic == changelog:
            raise IngestTopicError(
                f"{changelog!r} is delayq's jobs changelog, not its ingest topic"
            )
        try:
            counts = await partition_counts(client, [self.ingest_topic, changelog])
        except KafkaError as exc:
            if exc.retriable:
                raise  # cannot reach the broker: BrokerUnavailable
            raise IngestTopicError(
                f"cannot look up the ingest topic {self.ingest_topic!r} on {self._where}: {exc}"
            ) from exc
        ingest, jobs = counts[self.ingest_topic], counts[changelog]
        if ingest is None:
            raise IngestTopicError(
                f"the ingest topic {self.ingest_topic!r} does not exist on {self._where}: "
                "is the name right (DELAYQ_INGEST_TOPIC)? delayq's workers create it at start"
            )
        if jobs is None:
            raise IngestTopicError(
                f"no delayq worker of app id {self.app_id!r} has run on {self._where} (no topic "
                f"{changelog!r}): start one first, or give the app id the workers have "
                "(DELAYQ_APP_ID)"
            )
        if ingest != jobs:
            raise IngestTopicError(
                f"topic {self.ingest_topic!r} has {ingest} partitions, the workers of app id "
                f"{self.app_id!r} have {jobs}: it is not their ingest topic (DELAYQ_INGEST_TOPIC)"
            )

    async def close(self) -> None:
        """Flush and disconnect (waits at most ``request_timeout`` seconds). Idempotent."""
        self._closed = True
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), self.request_timeout)

    async def _produce(
        self,
        what: str,
        key: bytes,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        timestamp_ms: int | None = None,
    ) -> Any:
        producer = await self._started()
        send = producer.send_and_wait(
            self.ingest_topic, value, key=key, headers=headers, timestamp_ms=timestamp_ms
        )
        try:
            return await asyncio.wait_for(send, self.request_timeout)
        except UnknownTopicOrPartitionError as exc:  # deleted since the client started
            raise IngestTopicError(
                f"{what}: the ingest topic {self.ingest_topic!r} does not exist on {self._where}"
            ) from exc
        except (KafkaConnectionError, KafkaTimeoutError, OSError, TimeoutError) as exc:
            raise self._unavailable(what, exc) from exc
        except KafkaError as exc:
            if exc.retriable:
                raise self._unavailable(what, exc) from exc
            raise DelayqError(f"{what}: refused by {self._where}: {exc!r}") from exc

    def _unavailable(self, what: str, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"{what}: no acknowledgement from {self._where} within {self.request_timeout:g}s "
            f"({type(exc).__name__}); it may or may not have been written, and sending it "
            "again with the same job id is safe"
        )

    async def schedule(
        self,
        value: Data | None,
        *,
        target: str,
        delay: Duration | None = None,
        at: Moment | None = None,
        key: Data | None = None,
        job_id: str | None = None,
        headers: Headers | None = None,
        cron: str | None = None,
        timezone: str | None = None,
        every: Duration | None = None,
        until: Moment | None = None,
    ) -> ScheduledJob:
        """Forward ``value`` to ``target`` after ``delay`` or at ``at`` (exactly one of them).

        ``value`` None forwards a tombstone. ``key`` is the forwarded record's key (default: the
        job id). ``job_id`` defaults to a new random id; scheduling an existing id replaces that
        job. A ``delay`` counts from the ingest record's timestamp, which is set here, so the
        returned due time is the one the worker computes.

        A recurring job gives ``cron`` (five fields or ``@daily`` ..., read in ``timezone``,
        an IANA name, default UTC) or ``every`` (an interval of at least 1 s): it is forwarded
        at every occurrence until cancelled, or until ``until``. ``delay``/``at`` then set the
        first occurrence and may be left out: it is the rule's first after now. The returned
        due time is the first occurrence.
        """
        rule = _rule(cron, timezone, every, until)
        command = _schedule(self.ingest_topic, value, target, delay, at, key, job_id, headers, rule)
        what = f"schedule of job {command.job_id!r}"
        await self._started()
        timestamp_ms = None
        if command.delay_ms is not None:
            timestamp_ms = now_ms()
            _check_first(command.rule, _delayed_ms(command.delay_ms, timestamp_ms))
        meta = await self._produce(
            what, command.job_id.encode(), command.value, command.headers, timestamp_ms
        )
        if command.due_ms is not None:
            return ScheduledJob(command.job_id, command.due_ms)
        assert timestamp_ms is not None and command.delay_ms is not None
        if meta.timestamp_type == _LOG_APPEND_TIME and meta.timestamp and meta.timestamp > 0:
            timestamp_ms = int(meta.timestamp)  # the topic overrides producer timestamps
        return ScheduledJob(command.job_id, timestamp_ms + command.delay_ms)

    async def delay(
        self,
        value: Data | None,
        delay: Duration,
        *,
        target: str,
        key: Data | None = None,
        job_id: str | None = None,
        headers: Headers | None = None,
    ) -> ScheduledJob:
        """Forward ``value`` to ``target`` after ``delay`` (go-zero's ``Delay(body, d)``)."""
        return await self.schedule(
            value, target=target, delay=delay, key=key, job_id=job_id, headers=headers
        )

    async def at(
        self,
        value: Data | None,
        at: Moment,
        *,
        target: str,
        key: Data | None = None,
        job_id: str | None = None,
        headers: Headers | None = None,
    ) -> ScheduledJob:
        """Forward ``value`` to ``target`` at ``at`` (go-zero's ``At(body, t)``)."""
        return await self.schedule(
            value, target=target, at=at, key=key, job_id=job_id, headers=headers
        )

    async def cron(
        self,
        value: Data | None,
        cron: str,
        *,
        target: str,
        timezone: str | None = None,
        until: Moment | None = None,
        key: Data | None = None,
        job_id: str | None = None,
        headers: Headers | None = None,
    ) -> ScheduledJob:
        """Forward ``value`` to ``target`` at every time ``cron`` matches in ``timezone``
        (default UTC), until cancelled or ``until``; the first time is the next match."""
        return await self.schedule(
            value,
            target=target,
            cron=cron,
            timezone=timezone,
            until=until,
            key=key,
            job_id=job_id,
            headers=headers,
        )

    async def every(
        self,
        value: Data | None,
        every: Duration,
        *,
        target: str,
        until: Moment | None = None,
        key: Data | None = None,
        job_id: str | None = None,
        headers: Headers | None = None,
    ) -> ScheduledJob:
        """Forward ``value`` to ``target`` every ``every`` (at least 1 s) from one interval
        after now, until cancelled or ``until``."""
        return await self.schedule(
            value, target=target, every=every, until=until, key=key, job_id=job_id, headers=headers
        )

    async def cancel(self, job_id: str, *, wait: bool = False) -> CancelOutcome | None:
        """Cancel the pending job ``job_id``; nothing happens if there is none (any more).

        ``wait=True``: cancel through a worker's HTTP API (``api_url``) and return what the
        job's owner found when it applied the cancel (:class:`app.outcomes.CancelOutcome`):
        ``cancelled``, ``too_late`` (with when it was forwarded) or ``unknown``; None if the
        owner did not apply it within 10 s. Raises :class:`~app.errors.ApiUnavailable` if the
        API cannot be reached or refuses the request.
        """
        encoded = _job_id(job_id)
        if wait:
            return await asyncio.to_thread(
                _cancel_over_http, self.api_url, job_id, self.request_timeout + _CANCEL_WAIT_S
            )
        await self._produce(f"cancel of job {job_id!r}", encoded, None, [])
        return None


#: How long a worker waits for the owner to apply a cancel (``DELETE /jobs/{id}?wait=true``).
_CANCEL_WAIT_S = 10.0


def _cancel_over_http(api_url: str, job_id: str, timeout: float) -> CancelOutcome | None:
    """``DELETE /jobs/{id}?wait=true`` on ``api_url``: the outcome, None if not applied yet."""
    request = urllib.request.Request(
        f"{api_url}/jobs/{urllib.parse.quote(job_id, safe='')}?wait=true",
        method="DELETE",
        headers={"Accept": "application/json", "User-Agent": "delayq-client"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ApiUnavailable(
            f"{api_url} refused the cancel of {job_id!r}: HTTP {exc.code}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ApiUnavailable(f"cannot cancel {job_id!r} through {api_url}: {exc}") from None
    if status == 202:
        return None
    return CancelOutcome(body["status"], body.get("due_ms"), body.get("forwarded_ms"))


# --- the blocking client ----------------------------------------------------------------------


class _LoopThread:
    """An event loop running in a daemon thread, for blocking callers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="delayq-client", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a DelayQueue cannot be called from its own event loop")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.done():
                raise  # the coroutine's own TimeoutError
            future.cancel()
            raise BrokerUnavailable(
                f"no answer from the Kafka broker within {timeout:g}s"
            ) from None

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()


def _shutdown(runner: _LoopThread, queue: AsyncDelayQueue, timeout: float) -> None:
    """Close ``queue`` inside ``runner``'s loop, then stop the loop (also at exit or GC)."""
    with contextlib.suppress(Exception):
        runner.call(queue.close(), timeout)
    runner.stop()


class _Blocking(Generic[_P, _T]):
    """A method of :class:`DelayQueue` made from the :class:`AsyncDelayQueue` method of the same
    name: run in the queue's background loop, it blocks until that returns.

    Parameters, result and docstring are the async method's, for type checkers
    (``DelayQueue().schedule`` is ``(value, *, target, ...) -> ScheduledJob``), ``help()`` and
    IPython alike.
    """

    def __init__(
        self, method: Callable[Concatenate[AsyncDelayQueue, _P], Coroutine[Any, Any, _T]]
    ) -> None:
        self._method = method
        functools.update_wrapper(self, method)
        signature = inspect.signature(method)
        self._bound_signature = signature.replace(
            parameters=list(signature.parameters.values())[1:]  # without self
        )

    def __set_name__(self, owner: type[DelayQueue], name: str) -> None:
        self.__qualname__ = f"{owner.__qualname__}.{name}"

    def __call__(self, queue: DelayQueue, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return queue._call(self._method(queue._queue, *args, **kwargs))

    @overload
    def __get__(self, queue: None, owner: type[DelayQueue]) -> Self: ...

    @overload
    def __get__(self, queue: DelayQueue, owner: type[DelayQueue]) -> Callable[_P, _T]: ...

    def __get__(self, queue: DelayQueue | None, owner: type[DelayQueue]) -> Self | Callable[_P, _T]:
        if queue is None:
            return self

        def blocking(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            return self(queue, *args, **kwargs)

        functools.update_wrapper(blocking, self._method)
        blocking.__qualname__ = self.__qualname__
        # A function has no typed __signature__; inspect reads it before __wrapped__'s (with self).
        blocking.__signature__ = self._bound_signature  # type: ignore[attr-defined]
        return blocking


class DelayQueue:
    """The blocking form of :class:`AsyncDelayQueue`: same arguments, same methods.

    Runs its own event loop in a background thread (started on first use), so it works in plain
    scripts, threads and frameworks without asyncio. Use it as a context manager or call
    :meth:`close`. In asyncio code, prefer :class:`AsyncDelayQueue`: these calls block.
    """

    def __init__(
        self,
        bootstrap_servers: str | Iterable[str] | None = None,
        ingest_topic: str | None = None,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
        client_id: str = "delayq-client",
        producer_options: Mapping[str, Any] | None = None,
        app_id: str | None = None,
    ) -> None:
        self._queue = AsyncDelayQueue(
            bootstrap_servers,
            ingest_topic,
            request_timeout=request_timeout,
            client_id=client_id,
            producer_options=producer_options,
            app_id=app_id,
        )
        # Connecting, checking the ingest topic and one command are each bounded by
        # request_timeout.
        self._timeout = 3 * self._queue.request_timeout + _SYNC_GRACE_S
        self._runner: _LoopThread | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def bootstrap_servers(self) -> list[str]:
        return self._queue.bootstrap_servers

    @property
    def ingest_topic(self) -> str:
        return self._queue.ingest_topic

    @property
    def app_id(self) -> str:
        return self._queue.app_id

    @property
    def request_timeout(self) -> float:
        return self._queue.request_timeout

    def __repr__(self) -> str:
        return f"<DelayQueue {','.join(self.bootstrap_servers)} ingest={self.ingest_topic!r}>"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        with self._lock:
            if self._closed:
                coro.close()
                raise RuntimeError("this delay queue is closed")
            if self._runner is None:
                self._runner = _LoopThread()
                self._finalizer = weakref.finalize(
                    self, _shutdown, self._runner, self._queue, self._timeout
                )
            runner = self._runner
        return runner.call(coro, self._timeout)

    def close(self) -> None:
        """Flush, disconnect and stop the background thread. Idempotent."""
        with self._lock:
            self._closed = True
            finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer()

    # The commands: AsyncDelayQueue's, each run to completion in the background loop.
    start = _Blocking(AsyncDelayQueue.start)
    schedule = _Blocking(AsyncDelayQueue.schedule)
    delay = _Blocking(AsyncDelayQueue.delay)
    at = _Blocking(AsyncDelayQueue.at)
    cron = _Blocking(AsyncDelayQueue.cron)
    every = _Blocking(AsyncDelayQueue.every)
    cancel = _Blocking(AsyncDelayQueue.cancel)
