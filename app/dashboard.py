"""The operator's dashboard: one static page at ``/`` on every worker, and the JSON it reads.

The page (``app/static/dashboard.*``: plain HTML, CSS and JavaScript, no build step, no
request leaves the worker) polls the API every worker already serves (``GET /stats?cluster=1``,
``GET /jobs/{id}``, ``DELETE /jobs/{id}``) and the few reads the API has no call for, under
``/dashboard/api/``:

- ``cluster``: every worker with its active and standby partitions and its recovery state (the
  assignor knows only the active owners, so each worker is asked; answers even mid-rebalance),
  and a warning when partitions have fewer standby copies than configured (``app.standbys``);
- ``timeline``: pending jobs per minute over the next hour and per hour over the next 72 hours,
  plus those overdue and those later (bounded scans, see :meth:`Engine.timeline`);
- ``jobs``: the earliest pending jobs, a page at a time after an opaque cursor (a recurring
  job with its rule, in words too);
- ``dead-letters``: each worker's most recent dead letters and why, newest first.

Lists and the timeline fan out to every owner and merge, as ``app.api.routing`` does for
``GET /jobs``; a request carrying the routed header is answered from this worker alone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.resources
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from faust.web import Request, Response, View

from app.api.handlers import router
from app.api.models import FieldError, Reply, error_reply, invalid_request
from app.api.routing import ROUTED_HEADER, partition_of, same_worker
from app.durations import format_time_ms
from app.errors import ApiError
from app.jobs import Job, decode_job
from app.rule_fields import rule_json
from app.runtime import active_partitions, engine
from app.service import app, settings
from app.standbys import standby_counts, standby_partitions, standby_warning
from app.times import MAX_DUE_MS, now_ms
from tables.keys import DUE_END, due_key

__all__ = [
    "dashboard",
    "dashboard_asset",
    "dashboard_cluster",
    "dashboard_dead_letters",
    "dashboard_jobs",
    "dashboard_timeline",
]

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
#: Buckets of the two timelines: minutes of the next hour, hours of the next three days.
MINUTES = 60
HOURS = 72
#: Most due keys each of a timeline's two scans reads (about 0.2 s); beyond, lower bounds.
TIMELINE_MAX_SCAN = 100_000
#: A worker's timeline answer is reused this long (many open dashboards cost one scan).
TIMELINE_TTL_S = 2.0
DEFAULT_PAGE = 25
MAX_PAGE = 200
MAX_DEAD_LETTERS = 100
#: A worker that takes longer to say how it is doing is shown as unreachable.
NODE_TIMEOUT_S = 3.0

#: The page's files and their content types; nothing else is served from the directory.
ASSETS: Mapping[str, str] = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
#: Only this worker's own files and API: no CDN, no font service, no inline script.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


# --- static files ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


_assets: dict[str, Asset] = {}


def asset(name: str) -> Asset | None:
    """One of the page's files (read once from the package), or None for any other name."""
    found = _assets.get(name)
    if found is None and name in ASSETS:
        body = importlib.resources.files("app").joinpath("static", name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        found = _assets[name] = Asset(body, ASSETS[name], etag)
    return found


def _asset_response(view: View, request: Request, name: str) -> Response:
    found = asset(name)
    if found is None:
        return view.json({"code": 404, "message": f"no file {name!r}"}, status=404)
    headers = {
        "Cache-Control": "no-cache",
        "ETag": found.etag,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if name.endswith(".html"):
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        headers["X-Frame-Options"] = "DENY"
    if request.headers.get("If-None-Match") == found.etag:
        return view.bytes(b"", status=304, headers=headers)
    return view.bytes(found.body, headers={**headers, "Content-Type": found.content_type})


# --- cluster -----------------------------------------------------------------------------------


def _recovery() -> dict[str, Any]:
    tables: Any = app.tables  # its recovery service is not in Faust's TableManagerT
    state: dict[str, Any] = {
        "actives_ready": bool(tables.actives_ready),
        "standbys_ready": bool(tables.standbys_ready),
        "active_remaining": None,
        "standby_remaining": None,
    }
    try:  # Faust internals: best effort, never a reason for the page to fail
        recovery = tables.recovery
        state["in_recovery"] = bool(recovery.in_recovery)
        # Changelog records still to replay (an offset one past the highwater mark: none).
        state["active_remaining"] = sum(max(n, 0) for n in recovery.active_remaining().values())
        state["standby_remaining"] = sum(max(n, 0) for n in recovery.standby_remaining().values())
    except Exception as exc:
        log.debug("recovery state unavailable: %r", exc)
    return state


def local_node() -> dict[str, Any]:
    """This worker: its partitions and whether it is firing, recovering or rebalancing."""
    if router.ready():
        status = "ok"
    elif app.rebalancing:
        status = "rebalancing"
    else:
        status = "recovering"
    return {
        "worker": router.self_url,
        "status": status,
        "active_partitions": active_partitions(),
        "standby_partitions": standby_partitions(),
        "recovery": _recovery(),
        "next_wake_ms": engine.next_wake_ms,
    }


async def _node(url: str, path_qs: str) -> dict[str, Any]:
    if same_worker(url, router.self_url):
        return local_node()
    try:
        reply = await asyncio.wait_for(router.forward(url, "GET", path_qs), NODE_TIMEOUT_S)
        if reply.status != 200:
            raise ApiError(503, f"answered {reply.status}")
        node: dict[str, Any] = json.loads(reply.body)
    except (ApiError, ValueError, TimeoutError) as exc:
        if isinstance(exc, ApiError):
            error = exc.message
        elif isinstance(exc, TimeoutError):
            error = f"no answer within {NODE_TIMEOUT_S:g} s"
        else:
            error = "answered something else than JSON"
        return {
            "worker": url,
            "status": "unreachable",
            "error": error,
            "active_partitions": [],
            "standby_partitions": [],
        }
    node["worker"] = url  # as the assignor knows it, so the page can join it with /stats
    return node


async def cluster(path_qs: str) -> dict[str, Any]:
    """Every worker the last assignment named (and this one), and the partitions nobody owns."""
    owners = router.owners()
    urls = sorted(set(owners.values()))
    if not any(same_worker(url, router.self_url) for url in urls):
        urls.append(router.self_url)
    nodes = await asyncio.gather(*(_node(url, path_qs) for url in urls))
    # A worker that does not answer keeps no standby anyone can count on.
    copies = standby_counts((n["standby_partitions"] for n in nodes), settings.partitions)
    warning = standby_warning(settings.standby_replicas, copies, len(nodes))
    return {
        "now_ms": now_ms(),
        "partitions": settings.partitions,
        "standby_replicas": settings.standby_replicas,
        "without_standby": sorted(p for p, n in copies.items() if n < settings.standby_replicas),
        "warnings": [] if warning is None else [warning],
        "self": router.self_url,
        "owners": {str(p): url for p, url in sorted(owners.items())},
        "unowned": [p for p in range(settings.partitions) if p not in owners],
        "workers": sorted(nodes, key=lambda n: min(n["active_partitions"], default=1 << 30)),
    }


# --- timeline ----------------------------------------------------------------------------------


def _digits(text: str) -> bool:
    """Whether ``text`` is a decimal number in ASCII digits (``str.isdigit`` takes "²" too)."""
    return text.isascii() and text.isdigit()


def _start_ms(params: Mapping[str, str], name: str, unit_ms: int, now: int) -> int:
    """The bucket start the entry worker chose (so every owner counts the same buckets)."""
    text = params.get(name)
    if text is None:
        return now - now % unit_ms
    if not _digits(text) or int(text) % unit_ms or int(text) > MAX_DUE_MS:
        raise invalid_request([FieldError(field=name, message=f"a multiple of {unit_ms} ms")])
    return int(text)


_timeline_cache: dict[tuple[int, int], tuple[float, tuple[int, ...], dict[str, Any]]] = {}


def _overdue(active: list[int], before_ms: int, budget: int) -> tuple[int, bool]:
    """Pending jobs due before ``before_ms``; False if ``budget`` keys did not reach them all.

    Each partition is scanned from its earliest pending job on, not from the start of time: the
    keys of jobs fired since the last compaction are not read again.
    """
    total = 0
    for partition in active:
        first = engine.earliest([partition], 1, before_ms)
        if not first:
            continue
        start = first[0].due_ms
        (count,), complete = engine.timeline(
            [partition], start, before_ms - start, 1, max_scan=budget
        )
        total += count
        budget -= count
        if not complete:
            return total, False
    return total, True


def local_timeline(minute_start: int, hour_start: int) -> dict[str, Any]:
    """This worker's pending jobs by due time: overdue, per minute, per hour, later."""
    if not hour_start <= minute_start < hour_start + HOUR_MS:
        raise invalid_request(
            [FieldError(field="minute_start", message="must lie in the hour of hour_start")]
        )
    active = router.active()
    key = (minute_start, hour_start)
    cached = _timeline_cache.get(key)
    if cached and cached[1] == tuple(active) and time.monotonic() - cached[0] < TIMELINE_TTL_S:
        return cached[2]
    # By minute from this minute to the end of the last hour; the hours add up the minutes.
    skip = (minute_start - hour_start) // MINUTE_MS
    counts, complete = engine.timeline(
        active, minute_start, MINUTE_MS, HOURS * 60 - skip, max_scan=TIMELINE_MAX_SCAN
    )
    hours = [0] * HOURS
    for index, count in enumerate(counts):
        hours[(skip + index) // 60] += count
    overdue, overdue_complete = _overdue(active, minute_start, TIMELINE_MAX_SCAN)
    complete = complete and overdue_complete
    pending = engine.pending_count(active)
    answer = {
        "active_partitions": active,
        "minute_start_ms": minute_start,
        "hour_start_ms": hour_start,
        "minutes": counts[:MINUTES],
        "hours": hours,
        "overdue": overdue,
        "later": max(pending - overdue - sum(hours), 0) if complete else None,
        "pending": pending,
        "complete": complete,
    }
    _timeline_cache.clear()
    _timeline_cache[key] = (time.monotonic(), tuple(active), answer)
    return answer


def merge_timelines(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The cluster's timeline: the owners' buckets added up."""
    first = answers[0]
    complete = all(a["complete"] for a in answers)
    return {
        "minute_start_ms": first["minute_start_ms"],
        "hour_start_ms": first["hour_start_ms"],
        "minute_ms": MINUTE_MS,
        "hour_ms": HOUR_MS,
        "minutes": [sum(c) for c in zip(*(a["minutes"] for a in answers), strict=True)],
        "hours": [sum(c) for c in zip(*(a["hours"] for a in answers), strict=True)],
        "overdue": sum(a["overdue"] for a in answers),
        "later": sum(a["later"] for a in answers) if complete else None,
        "pending": sum(a["pending"] for a in answers),
        "complete": complete,
        "active_partitions": sorted(p for a in answers for p in a["active_partitions"]),
    }


async def timeline(params: Mapping[str, str], *, routed: bool) -> dict[str, Any]:
    now = now_ms()
    minute_start = _start_ms(params, "minute_start", MINUTE_MS, now)
    hour_start = _start_ms(params, "hour_start", HOUR_MS, now)
    if routed:
        return local_timeline(minute_start, hour_start)

    async def local() -> dict[str, Any]:
        return local_timeline(minute_start, hour_start)

    path_qs = f"/dashboard/api/timeline?minute_start={minute_start}&hour_start={hour_start}"
    return merge_timelines(await router.collect(path_qs, local))


# --- the earliest pending jobs, a page at a time -----------------------------------------------


def cursor_of(due_ms: int, job_id: bytes) -> str:
    """Where a page ends: ``<due ms>.<job id in hex>`` (hex sorts as the bytes do)."""
    return f"{due_ms}.{job_id.hex()}"


def parse_cursor(text: str) -> tuple[int, bytes]:
    """``(due_ms, job_id)`` of a cursor; ``<due ms>`` alone starts at that time (inclusive)."""
    due_text, _, id_hex = text.partition(".")
    try:
        due_ms, job_id = int(due_text), bytes.fromhex(id_hex)
    except ValueError:
        due_ms = -1
    if not _digits(due_text) or not 0 <= due_ms <= MAX_DUE_MS:
        raise invalid_request(
            [FieldError(field="after", message="expected <due ms> or <due ms>.<job id in hex>")]
        )
    return due_ms, job_id


def _page_limit(params: Mapping[str, str]) -> int:
    text = params.get("limit", str(DEFAULT_PAGE))
    if not _digits(text) or not 1 <= int(text) <= MAX_PAGE:
        raise invalid_request([FieldError(field="limit", message=f"1 to {MAX_PAGE}")])
    return int(text)


def _text(data: bytes | None) -> tuple[str | None, str | None]:
    """``(text, None)`` for UTF-8, else ``(None, base64)``."""
    if data is None:
        return None, None
    try:
        return data.decode(), None
    except UnicodeDecodeError:
        return None, base64.b64encode(data).decode()


def job_row(job: Job) -> dict[str, Any]:
    """What the list shows of a job (its value only by size: details come from /jobs/{id})."""
    partition = partition_of(job.job_id, settings.partitions)
    job_id, id_base64 = _text(job.job_id)
    return {
        "id": job_id,
        "id_base64": id_base64,
        "target": job.target,
        "due_ms": job.due_ms,
        "due_at": format_time_ms(job.due_ms),
        "status": str(engine.status(partition, job)),
        "partition": partition,
        "value_bytes": None if job.value is None else len(job.value),
        "cursor": cursor_of(job.due_ms, job.job_id),
        "rule": None if job.rule is None else rule_json(job.rule),
    }


def _jobs_after(active: list[int], after: tuple[int, bytes], limit: int) -> list[Job]:
    """Up to ``limit`` pending jobs of each partition after the cursor, by (due time, id)."""
    start = due_key(*after)
    found: list[Job] = []
    for partition in active:
        scan = engine.store.scan(partition, start, DUE_END)
        taken = 0
        try:
            for key, raw in scan:
                if key == start:  # the last job of the previous page
                    continue
                found.append(decode_job(raw))
                taken += 1
                if taken == limit:
                    break
        finally:
            scan.close()
    return found


def local_jobs(after: tuple[int, bytes] | None, limit: int) -> dict[str, Any]:
    """This worker's earliest pending jobs after the cursor: one more than a page, if any."""
    active = router.active()
    if after is None:  # from the start: the engine skips what it knows was fired
        jobs = engine.earliest(active, limit + 1)
    else:
        jobs = _jobs_after(active, after, limit + 1)
    jobs.sort(key=lambda job: (job.due_ms, job.job_id))
    return {"jobs": [job_row(job) for job in jobs[: limit + 1]], "active_partitions": active}


def merge_pages(answers: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """One page of the cluster's earliest jobs, and the cursor of the next (None: the last)."""
    rows = [row for answer in answers for row in answer["jobs"]]
    rows.sort(key=lambda row: (row["due_ms"], row["cursor"].partition(".")[2]))
    page = rows[:limit]
    return {
        "jobs": page,
        "count": len(page),
        "limit": limit,
        "next": page[-1]["cursor"] if len(rows) > limit else None,
    }


async def jobs_page(params: Mapping[str, str], *, routed: bool, path_qs: str) -> dict[str, Any]:
    limit = _page_limit(params)
    after = parse_cursor(params["after"]) if params.get("after") else None
    if routed:
        return local_jobs(after, limit)

    async def local() -> dict[str, Any]:
        return local_jobs(after, limit)

    return merge_pages(await router.collect(path_qs, local), limit)


# --- dead letters ------------------------------------------------------------------------------


def local_dead_letters() -> dict[str, Any]:
    """This worker's most recent dead letters, newest first."""
    letters = []
    for letter in reversed(engine.stats.recent_dead_letters):
        key, key_base64 = _text(letter.key)
        letters.append(
            {
                "at_ms": letter.at_ms,
                "at": format_time_ms(letter.at_ms),
                "key": key,
                "key_base64": key_base64,
                "reason": letter.reason,
                "worker": router.self_url,
            }
        )
    return {
        "dead_letters": letters,
        "total": engine.stats.dead_lettered,
        "active_partitions": router.active(),
    }


async def dead_letters(*, routed: bool) -> dict[str, Any]:
    if routed:
        return local_dead_letters()

    async def local() -> dict[str, Any]:
        return local_dead_letters()

    answers = await router.collect("/dashboard/api/dead-letters", local)
    letters = [letter for answer in answers for letter in answer["dead_letters"]]
    letters.sort(key=lambda letter: letter["at_ms"], reverse=True)
    return {
        "dead_letters": letters[:MAX_DEAD_LETTERS],
        "total": sum(answer["total"] for answer in answers),
    }


# --- views -------------------------------------------------------------------------------------


def _routed(request: Request) -> bool:
    return ROUTED_HEADER in request.headers


async def _json(view: View, request: Request, call: Callable[[], Awaitable[Any]]) -> Response:
    """The answer as JSON (never cached); errors in the API's envelope."""
    try:
        reply = Reply(200, await call())
    except ApiError as exc:
        reply = error_reply(exc)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.rel_url.path)
        reply = error_reply(ApiError(500, "internal error (see the worker's log)"))
    return view.json(reply.body, status=reply.status, headers={**reply.headers, **_NO_STORE})


_NO_STORE = {"Cache-Control": "no-store"}


@app.page("/")
class dashboard(View):
    """The dashboard page."""

    async def get(self, request: Request) -> Response:
        return _asset_response(self, request, "dashboard.html")


@app.page("/dashboard/static/{name}")
class dashboard_asset(View):
    """The page's stylesheet and script."""

    async def get(self, request: Request, name: str) -> Response:
        return _asset_response(self, request, name)


@app.page("/dashboard/api/cluster")
class dashboard_cluster(View):
    """Workers, their active and standby partitions, their recovery state."""

    async def get(self, request: Request) -> Response:
        if _routed(request):
            return await _json(self, request, _as_async(local_node))
        path_qs = request.rel_url.raw_path
        return await _json(self, request, lambda: cluster(path_qs))


@app.page("/dashboard/api/timeline")
class dashboard_timeline(View):
    """Pending jobs per minute of the next hour and per hour of the next 72 hours."""

    async def get(self, request: Request) -> Response:
        params, routed = dict(request.query), _routed(request)
        return await _json(self, request, lambda: timeline(params, routed=routed))


@app.page("/dashboard/api/jobs")
class dashboard_jobs(View):
    """A page of the earliest pending jobs: ``?limit=&after=<cursor>``."""

    async def get(self, request: Request) -> Response:
        params, routed = dict(request.query), _routed(request)
        path_qs = request.rel_url.raw_path_qs
        return await _json(self, request, lambda: jobs_page(params, routed=routed, path_qs=path_qs))


@app.page("/dashboard/api/dead-letters")
class dashboard_dead_letters(View):
    """The most recent dead letters of every worker, newest first, with their reasons."""

    async def get(self, request: Request) -> Response:
        routed = _routed(request)
        return await _json(self, request, lambda: dead_letters(routed=routed))


def _as_async(fun: Callable[[], dict[str, Any]]) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def call() -> dict[str, Any]:
        return fun()

    return call
