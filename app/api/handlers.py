"""What each endpoint does, without the web framework: a :class:`~app.api.models.Reply` out.

Writes go to the ingest topic through the app's producer and return once the broker has
acknowledged them (acks=all): schedule and cancel travel the same path as any producer's
records, so the one agent stays the only writer of the jobs table. Reads of one job are answered
by the worker that owns its partition (``app.api.routing``); lists and cluster stats ask every
owner and merge.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any, cast

from aiokafka.errors import KafkaError

from app.api.models import (
    FieldError,
    ListQuery,
    Reply,
    Schedule,
    ScheduleIn,
    cancel_outcome_out,
    echo,
    invalid_request,
    job_out,
    parse_model,
)
from app.api.routing import RETRY_AFTER_S, Remote, Router, partition_of
from app.durations import format_time_ms
from app.errors import ApiError
from app.jobs import Header, JobStatus
from app.jobs_table import jobs_table
from app.metrics import COUNTERS, Snapshot, quantile
from app.names import MAX_JOB_ID_BYTES
from app.runtime import active_partitions, engine
from app.service import app, settings
from app.times import now_ms

__all__ = [
    "cancel_job",
    "cluster_stats",
    "get_job",
    "list_jobs",
    "metrics_snapshot",
    "parse_json",
    "produce_schedule",
    "router",
    "schedule_job",
    "settings",
    "stats",
]

router = Router(
    app,
    lambda: jobs_table.changelog_topic.get_topic_name(),
    settings.partitions,
    active_partitions,
    settings.api_token.get_secret_value() if settings.api_token else None,
)
FORBIDDEN_TARGETS = settings.internal_topics()
#: Jobs looked at to find the oldest one not in flight (beyond: the age is an upper bound).
_OVERDUE_WINDOW = 64


def parse_json(body: bytes) -> Any:
    """The request body as JSON, or 400."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON") from None


def _job_id_bytes(job_id: str) -> bytes:
    try:
        encoded = job_id.encode()
    except UnicodeEncodeError:
        encoded = b""
    if not encoded or len(encoded) > MAX_JOB_ID_BYTES:
        raise invalid_request(
            [FieldError(field="job_id", message=f"must be 1 to {MAX_JOB_ID_BYTES} UTF-8 bytes")]
        )
    return encoded


async def _produce(key: bytes, value: bytes | None, headers: list[Header]) -> tuple[int, int]:
    """Write one ingest record to the partition of ``key``: its partition and offset, acked."""
    partition = partition_of(key, settings.partitions)
    timeout = settings.forward_timeout_s
    try:
        ack = await asyncio.wait_for(
            # Null header values are valid in Kafka (Faust's annotation says bytes only).
            app.producer.send(
                settings.ingest_topic, key, value, partition, None, cast(Any, headers)
            ),
            timeout,
        )
        written = await asyncio.wait_for(asyncio.ensure_future(ack), timeout)
    except (TimeoutError, KafkaError) as exc:
        raise ApiError(
            503,
            f"the broker did not acknowledge the ingest record ({type(exc).__name__}); "
            "it may or may not have been written: retrying with the same id is safe",
            retry_after=RETRY_AFTER_S,
        ) from None
    return partition, int(written.offset)


async def produce_schedule(schedule: Schedule) -> int:
    """Write a checked schedule; its partition once acknowledged."""
    partition, _offset = await _produce(
        schedule.job_id_bytes, schedule.value, schedule.ingest_headers()
    )
    return partition


async def schedule_job(body: bytes) -> Reply:
    """``POST /jobs``."""
    request = parse_model(ScheduleIn, parse_json(body))
    schedule = request.resolve(now_ms(), FORBIDDEN_TARGETS, settings.max_forward_bytes)
    partition = await produce_schedule(schedule)
    return Reply(
        201,
        {
            "id": schedule.job_id,
            "due_ms": schedule.due_ms,
            "due_at": format_time_ms(schedule.due_ms),
            "partition": partition,
        },
    )


async def get_job(job_id: str, *, routed: bool, path_qs: str) -> Reply:
    """``GET /jobs/{id}``: answered by the owner of the job's partition."""
    encoded = _job_id_bytes(job_id)
    where = router.locate(encoded, routed=routed)
    if isinstance(where, Remote):
        return await router.forward(where.url, "GET", path_qs)
    job = engine.get(where.partition, encoded)
    if job is None:
        raise ApiError(404, f"no pending job {echo(job_id)}")
    return Reply(200, job_out(job, engine.status(where.partition, job), where.partition))


#: How long ``DELETE /jobs/{id}?wait=true`` waits for the owner to apply the cancel.
CANCEL_WAIT_S = 10.0


def _wait_s(wait: str | None) -> float | None:
    """``?wait=true`` (or 1, yes): how long to wait for a cancel's outcome; None: do not."""
    value = (wait or "").lower()
    if value in {"", "0", "false", "no"}:
        return None
    if value in {"1", "true", "yes"}:
        return CANCEL_WAIT_S
    raise invalid_request([FieldError(field="wait", message="must be true or false")])


async def cancel_job(job_id: str, *, routed: bool, path_qs: str, wait: str | None = None) -> Reply:
    """``DELETE /jobs/{id}``: the owner checks the job is pending, then writes a cancel.

    ``?wait=true``: write the cancel whatever the job's state, then answer with what applying
    it found (app/outcomes.py), or 202 if it was not applied within :data:`CANCEL_WAIT_S`.
    """
    wait_s = _wait_s(wait)
    encoded = _job_id_bytes(job_id)
    where = router.locate(encoded, routed=routed)
    if isinstance(where, Remote):
        return await router.forward(where.url, "DELETE", path_qs)
    if wait_s is not None:
        partition, offset = await _produce(encoded, None, [])
        outcome = await engine.outcomes.wait(partition, offset, wait_s)
        if outcome is None:
            return Reply(202, {"id": job_id, "status": "cancelling"})
        return Reply(200, cancel_outcome_out(job_id, outcome))
    job = engine.get(where.partition, encoded)
    if job is None:
        raise ApiError(404, f"no pending job {echo(job_id)}")
    # A recurring job is cancelled whatever its current occurrence does: an occurrence in
    # flight may still arrive, but the series ends (its forward finds no job to move on).
    if engine.status(where.partition, job) is JobStatus.IN_FLIGHT and job.rule is None:
        raise ApiError(409, f"job {echo(job_id)} was already forwarded to {job.target!r}")
    await _produce(encoded, None, [])
    return Reply(202, {"id": job_id, "status": "cancelling"})


def _local_list(query: ListQuery) -> dict[str, Any]:
    active = router.active()
    jobs = []
    for job in engine.earliest(active, query.limit, query.before_ms):
        partition = partition_of(job.job_id, settings.partitions)
        jobs.append(job_out(job, engine.status(partition, job), partition))
    return _job_list(jobs, query, active)


def _job_list(jobs: list[dict[str, Any]], query: ListQuery, active: list[int]) -> dict[str, Any]:
    return {
        "jobs": jobs,
        "count": len(jobs),
        "limit": query.limit,
        "before_ms": query.before_ms,
        "active_partitions": sorted(active),
    }


async def list_jobs(params: Mapping[str, str], *, routed: bool, path_qs: str) -> Reply:
    """``GET /jobs``: the earliest pending jobs of the cluster (of this worker if routed)."""
    query = parse_model(ListQuery, dict(params))
    if routed:
        return Reply(200, _local_list(query))

    async def local() -> dict[str, Any]:
        return _local_list(query)

    answers = await router.collect(path_qs, local)
    merged = [job for answer in answers for job in answer["jobs"]]
    merged.sort(key=lambda job: (job["due_ms"], job["id"] or "", job.get("id_base64") or ""))
    return Reply(200, _job_list(merged[: query.limit], query, list(range(settings.partitions))))


# --- stats -----------------------------------------------------------------------------------


def _counters() -> dict[str, int]:
    return {name: int(getattr(engine.stats, name)) for name in COUNTERS}


def _oldest_overdue_ms(active: list[int], now: int) -> int:
    due = engine.earliest(active, _OVERDUE_WINDOW, before_ms=now + 1)
    # Overdue since the later of due and receipt: a job scheduled in the past is not years late.
    waiting = [
        now - job.late_from_ms
        for job in due
        if engine.status(partition_of(job.job_id, settings.partitions), job) is JobStatus.PENDING
    ]
    if waiting:
        return max(max(waiting), 0)
    # Nothing due, or every job looked at is in flight: the next one is at most this old.
    return now - due[-1].due_ms if len(due) == _OVERDUE_WINDOW else 0


def _lateness(samples: list[int]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "samples": len(ordered),
        "p50": quantile(ordered, 0.5),
        "p90": quantile(ordered, 0.9),
        "p99": quantile(ordered, 0.99),
        "max": ordered[-1] if ordered else None,
    }


def _local_stats() -> dict[str, Any]:
    active = router.active()
    return {
        "worker": router.self_url,
        "active_partitions": active,
        "pending": engine.pending_count(active),
        "oldest_overdue_ms": _oldest_overdue_ms(active, now_ms()),
        "guard_lag_ms": engine.guard_lag_ms(active, now_ms()),
        "counters": _counters(),
        "lateness_ms": _lateness(list(engine.stats.lateness_ms)),
        "move_lag_ms": _lateness(list(engine.stats.move_lag_ms)),
    }


async def stats(params: Mapping[str, str], *, routed: bool) -> Reply:
    """``GET /stats``: this worker's; ``?cluster=1``: every worker's and their total."""
    cluster = params.get("cluster", "").lower() in {"1", "true", "yes"}
    if routed or not cluster:
        return Reply(200, _local_stats())
    return Reply(200, await cluster_stats())


async def cluster_stats() -> dict[str, Any]:
    async def local() -> dict[str, Any]:
        return _local_stats()

    workers = await router.collect("/stats", local)
    workers.sort(key=lambda w: min(w["active_partitions"], default=math.inf))
    maxima = [w["lateness_ms"]["max"] for w in workers if w["lateness_ms"]["max"] is not None]
    total = {
        "pending": sum(w["pending"] for w in workers),
        "oldest_overdue_ms": max((w["oldest_overdue_ms"] for w in workers), default=0),
        "guard_lag_ms": max((w["guard_lag_ms"] for w in workers), default=0),
        "counters": {name: sum(w["counters"][name] for w in workers) for name in COUNTERS},
        "lateness_max_ms": max(maxima, default=None),
    }
    return {"workers": workers, "total": total}


def metrics_snapshot() -> Snapshot:
    """What ``/metrics`` exports (pending and overdue only while the tables are ready)."""
    counters = _counters()
    lateness = list(engine.stats.lateness_ms)
    if not router.ready():
        return Snapshot(counters, lateness, ready=False, active_partitions=0)
    active = active_partitions()
    return Snapshot(
        counters,
        lateness,
        ready=True,
        active_partitions=len(active),
        pending=engine.pending_count(active),
        oldest_overdue_ms=_oldest_overdue_ms(active, now_ms()),
        guard_lag_ms=engine.guard_lag_ms(active, now_ms()),
    )
