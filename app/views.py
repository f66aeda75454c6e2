"""HTTP views served by every worker's Faust web server (loopback by default).

Thin: each view hands the request to ``app.api.handlers`` / ``app.api.compat`` and writes the
:class:`~app.api.models.Reply` back. Errors share one envelope, ``{"code", "message",
"errors"?}``; a 503 carries ``Retry-After``. The document of all of it is ``GET /openapi.json``.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from faust.web import Request, Response, View

from app.api import compat, handlers, middleware
from app.api.models import Reply, error_reply
from app.api.openapi import document
from app.api.routing import ROUTED_HEADER
from app.errors import ApiError
from app.metrics import CONTENT_TYPE_LATEST, registry_for, render
from app.runtime import active_partitions, engine
from app.service import app, settings
from app.standbys import assignment_standbys, standby_lag, standby_partitions, standby_warning

__all__ = [
    "compat_add",
    "compat_get",
    "compat_remove",
    "health",
    "job",
    "jobs",
    "metrics",
    "openapi",
    "stats",
]

log = logging.getLogger(__name__)

_metrics_registry = registry_for(handlers.metrics_snapshot)
# aiohttp's own errors (no route, wrong method, body too large) as JSON like the views' errors.
middleware.install(app.web)


def _respond(view: View, reply: Reply) -> Response:
    if isinstance(reply.body, bytes):
        headers = {**reply.headers, "Content-Type": reply.content_type or "application/json"}
        return view.bytes(reply.body, status=reply.status, headers=headers)
    return view.json(reply.body, status=reply.status, headers=reply.headers or None)


async def _answer(view: View, request: Request, call: Awaitable[Reply]) -> Response:
    try:
        reply = await call
    except ApiError as exc:
        reply = error_reply(exc)
    except web.HTTPException:  # aiohttp's own (413 body too large, ...): JSON by the middleware
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.rel_url.path)
        reply = error_reply(ApiError(500, "internal error (see the worker's log)"))
    return _respond(view, reply)


def _authorized(request: Request) -> bool:
    """Whether a request that changes jobs may proceed (constant-time token comparison)."""
    if settings.api_token is None:
        return True
    expected = f"Bearer {settings.api_token.get_secret_value()}".encode()
    return hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected)


def _unauthorized(view: View, *, compat_envelope: bool = False) -> Response:
    message = "missing or wrong bearer token (Authorization: Bearer <DELAYQ_API_TOKEN>)"
    body: dict[str, Any] = {"code": 401, "message": message}
    if compat_envelope:
        body["data"] = None
    return view.json(body, status=401, headers={"WWW-Authenticate": "Bearer"})


def _routed(request: Request) -> bool:
    return ROUTED_HEADER in request.headers


def _query(request: Request) -> dict[str, str]:
    return dict(request.query)


@app.page("/jobs")
class jobs(View):
    """``POST``: schedule a job; ``GET``: the earliest pending jobs of the cluster."""

    async def post(self, request: Request) -> Response:
        if not _authorized(request):
            return _unauthorized(self)
        return await _answer(self, request, _read_then(request, handlers.schedule_job))

    async def get(self, request: Request) -> Response:
        call = handlers.list_jobs(
            _query(request), routed=_routed(request), path_qs=request.rel_url.raw_path_qs
        )
        return await _answer(self, request, call)


async def _read_then(request: Request, handler: Any) -> Reply:
    body = await request.read()
    reply: Reply = await handler(body)
    return reply


@app.page("/jobs/{job_id:.+}")
class job(View):
    """``GET``: one pending job; ``DELETE``: cancel it. Routed to the partition's owner."""

    async def get(self, request: Request, job_id: str) -> Response:
        call = handlers.get_job(
            job_id, routed=_routed(request), path_qs=request.rel_url.raw_path_qs
        )
        return await _answer(self, request, call)

    async def delete(self, request: Request, job_id: str) -> Response:
        if not _authorized(request):
            return _unauthorized(self)
        call = handlers.cancel_job(
            job_id,
            routed=_routed(request),
            path_qs=request.rel_url.raw_path_qs,
            wait=_query(request).get("wait"),
        )
        return await _answer(self, request, call)


@app.page("/stats")
class stats(View):
    """This worker's counters, pending count, overdue age and lateness; ``?cluster=1``: all."""

    async def get(self, request: Request) -> Response:
        call = handlers.stats(_query(request), routed=_routed(request))
        return await _answer(self, request, call)


@app.page("/metrics")
class metrics(View):
    """Prometheus text format, read from the engine at scrape time."""

    async def get(self, request: Request) -> Response:
        return self.bytes(render(_metrics_registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


@app.page("/openapi.json")
class openapi(View):
    """The OpenAPI 3.1 document of this API."""

    async def get(self, request: Request) -> Response:
        return self.json(document())


def _warnings() -> list[str]:
    """What is degraded without making the worker unready (a 200 all the same)."""
    copies, workers = assignment_standbys()
    warning = standby_warning(settings.standby_replicas, copies, workers)
    return [] if warning is None else [warning]


@app.page("/health")
class health(View):
    """200 once this worker's tables are recovered and it is firing; 503 before.

    ``warnings`` names what is degraded but not down (partitions short of standby copies).
    """

    async def get(self, request: Request) -> Response:
        ready = bool(app.tables.actives_ready) and not app.rebalancing
        body: dict[str, Any] = {
            "status": "ok" if ready else "recovering",
            "active_partitions": active_partitions() if ready else [],
            "standby_partitions": standby_partitions() if ready else [],
            "next_wake_ms": engine.next_wake_ms,
            "pid": os.getpid(),  # which process answers: `make run` waits for its own worker
            "warnings": _warnings() if ready else [],
        }
        if ready:
            # {partition: changelog records not yet read by the standby copy}; null if unknown.
            lag = await standby_lag()
            body["standby_lag"] = None if lag is None else {str(p): n for p, n in lag.items()}
        return self.json(
            body, status=200 if ready else 503, headers=None if ready else {"Retry-After": "1"}
        )


# --- go-delayqueue compatibility (POST with a JSON body; GET with ?job_id= as its router) ----


@app.page("/delay-queue/api/jobs/add")
class compat_add(View):
    async def post(self, request: Request) -> Response:
        if not _authorized(request):
            return _unauthorized(self, compat_envelope=True)
        return await _answer(self, request, _read_then(request, compat.add))


async def _compat_call(request: Request, handler: Any) -> Reply:
    body = await request.read()
    reply: Reply = await handler(body, _query(request))
    return reply


@app.page("/delay-queue/api/jobs/remove")
class compat_remove(View):
    async def post(self, request: Request) -> Response:
        if not _authorized(request):
            return _unauthorized(self, compat_envelope=True)
        return await _answer(self, request, _compat_call(request, compat.remove))

    async def get(self, request: Request) -> Response:
        if not _authorized(request):
            return _unauthorized(self, compat_envelope=True)
        return await _answer(self, request, _compat_call(request, compat.remove))


@app.page("/delay-queue/api/jobs/get")
class compat_get(View):
    async def post(self, request: Request) -> Response:
        return await _answer(self, request, _compat_call(request, compat.get))

    async def get(self, request: Request) -> Response:
        return await _answer(self, request, _compat_call(request, compat.get))
