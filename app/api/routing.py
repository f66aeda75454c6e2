"""Which worker answers for a job id, and forwarding a request to it.

A job with id K lives in partition ``murmur2(K) % partitions`` of the jobs table: the partition
of its ingest record under Kafka's default partitioner (aiokafka's ``DefaultPartitioner``, the
Java client's, librdkafka's ``murmur2_random``), because the table is co-partitioned with the
ingest topic. Faust's assignor hands every member the cluster's map of active table partitions
to worker URLs (``app.assignor.tables_metadata()``, ``{canonical_url: {changelog topic:
[partitions]}}``), so any worker can tell who owns K without asking.

Why not ``@app.table_route``: it proxies only the method and headers (a POST body is lost), gives
back only text, content type and status, and finds the partition through the producer's topic
metadata. This router forwards the request as it came (path, query, body), passes the owner's
answer back unchanged, and answers 503 with ``Retry-After`` whenever the owner is unknown or not
ready (a rebalance, a recovery, a dead worker).

A forwarded request carries :data:`ROUTED_HEADER`; a worker receiving one answers from its own
partitions or with 503, never forwards again, so stale metadata cannot make requests loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from app.api.models import Reply
from app.errors import ApiError
from app.moving import home_partition as partition_of

__all__ = [
    "RETRY_AFTER_S",
    "ROUTED_HEADER",
    "Local",
    "Remote",
    "Router",
    "partition_of",
    "same_worker",
]

#: Set on forwarded requests (value: the sender's URL).
ROUTED_HEADER = "X-Delayq-Routed"
#: What a 503 tells the client to wait: a rebalance on a healthy cluster takes seconds.
RETRY_AFTER_S = 1
#: The longest a forwarded request may take (the owner itself waits at most for one produce).
FORWARD_TIMEOUT_S = 30.0


def same_worker(a: str, b: str) -> bool:
    """Whether two worker URLs name the same host and port."""
    ua, ub = URL(a), URL(b)
    return (ua.host, ua.port) == (ub.host, ub.port)


def unavailable(reason: str) -> ApiError:
    return ApiError(503, reason, retry_after=RETRY_AFTER_S)


@dataclass(frozen=True, slots=True)
class Local:
    """This worker owns the partition and its table is ready."""

    partition: int


@dataclass(frozen=True, slots=True)
class Remote:
    """Another worker owns the partition."""

    partition: int
    url: str


class Router:
    """Ownership from the Faust app's assignor; forwarding with the app's HTTP client."""

    def __init__(
        self,
        app: Any,
        changelog_topic: Callable[[], str],
        partitions: int,
        active_partitions: Callable[[], list[int]],
        token: str | None = None,
    ) -> None:
        self.app = app
        self._changelog_topic = changelog_topic
        self.partitions = partitions
        self._active = active_partitions
        #: The cluster's API token, sent with forwarded requests.
        self.token = token

    @property
    def self_url(self) -> str:
        return str(self.app.conf.canonical_url)

    def ready(self) -> bool:
        """Whether this worker's active partitions are recovered and no rebalance runs."""
        return bool(self.app.tables.actives_ready) and not self.app.rebalancing

    def active(self) -> list[int]:
        """This worker's active partitions, or 503 while they are not ready."""
        if not self.ready():
            raise unavailable("this worker is rebalancing or recovering its tables")
        return self._active()

    def owners(self) -> dict[int, str]:
        """Partition -> URL of the worker that owns it as active, as the last assignment said."""
        topic = self._changelog_topic()
        owners: dict[int, str] = {}
        for url, topics in self.app.assignor.tables_metadata().items():
            for partition in topics.get(topic, ()):
                owners[partition] = str(url)
        return owners

    def locate(self, job_id: bytes, *, routed: bool) -> Local | Remote:
        """Where ``job_id`` is answered; 503 when nobody can answer now."""
        partition = partition_of(job_id, self.partitions)
        if partition in self._active():
            if not self.ready():
                raise unavailable(f"partition {partition} is being recovered")
            return Local(partition)
        if routed:
            raise unavailable(f"partition {partition} moved (rebalance in progress)")
        url = self.owners().get(partition)
        if url is None or same_worker(url, self.self_url):
            raise unavailable(f"the owner of partition {partition} is not known yet (rebalance)")
        return Remote(partition, url)

    async def forward(
        self,
        url: str,
        method: str,
        path_qs: str,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> Reply:
        """Send the request to ``url`` (``path_qs``: raw path and query), relay the answer."""
        target = URL(url.rstrip("/") + path_qs, encoded=True)
        headers = {ROUTED_HEADER: self.self_url}
        if self.token:  # the owner checks it too: the routed header alone proves nothing
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        try:
            async with self.app.http_client.request(
                method,
                target,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S),
            ) as response:
                data = await response.read()
                relayed = {
                    name: response.headers[name]
                    for name in ("Retry-After",)
                    if name in response.headers
                }
                ctype = response.headers.get("Content-Type", "application/json")
                return Reply(response.status, data, relayed, ctype)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unavailable(f"worker {url} did not answer ({type(exc).__name__})") from None

    async def collect(
        self, path_qs: str, local: Callable[[], Awaitable[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """Every owner's local answer to ``GET path_qs``; 503 unless they cover each partition once.

        Each answer must carry ``active_partitions``: the partitions it speaks for.
        """
        owners = self.owners()
        if set(owners) != set(range(self.partitions)):
            raise unavailable("not every partition has an owner yet (rebalance in progress)")
        urls = sorted(set(owners.values()))
        answers = await asyncio.gather(*(self._local_answer(url, path_qs, local) for url in urls))
        _check_coverage(answers, self.partitions)
        return answers

    async def _local_answer(
        self, url: str, path_qs: str, local: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        if same_worker(url, self.self_url):
            return await local()
        reply = await self.forward(url, "GET", path_qs)
        if reply.status != 200:
            raise unavailable(f"worker {url} answered {reply.status}")
        try:
            answer: dict[str, Any] = json.loads(reply.body)
        except ValueError:
            raise unavailable(f"worker {url} answered something else than JSON") from None
        return answer


def _check_coverage(answers: Iterable[dict[str, Any]], partitions: int) -> None:
    seen: list[int] = []
    for answer in answers:
        seen.extend(answer.get("active_partitions", ()))
    if sorted(seen) != list(range(partitions)):
        raise unavailable("workers disagree on partition ownership (rebalance in progress)")
