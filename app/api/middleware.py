"""The web server's own errors as JSON: no route (404), a method the route does not take (405,
with ``Allow``), a body over ``client_max_size`` (413), anything a view let escape (500).

aiohttp answers these in plain text before or around delayq's views; this middleware catches
them and answers in the route family's envelope: go-delayqueue's ``{"code", "message", "data":
null}`` under :data:`~app.api.models.COMPAT_PREFIX`, the native ``{"code", "message"}``
elsewhere. ``code`` is the HTTP status in both.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

from aiohttp import web

from app.api.models import COMPAT_PREFIX, compat_http_error, echo, error_reply
from app.errors import ApiError

__all__ = ["install", "json_errors"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Compact, as the views' JSON.
_dumps = partial(json.dumps, separators=(",", ":"))


def install(web_driver: Any) -> None:
    """Add :func:`json_errors` to Faust's aiohttp application (before the server starts)."""
    web_driver.web_app.middlewares.append(json_errors)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        _refuse_head_without_get(request)
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _response(request, exc.status, _message(request, exc), _kept_headers(exc))
    except Exception:
        log.exception("%s %s failed", request.method, request.rel_url.path)
        return _response(request, 500, "internal error (see the worker's log)", {})


def _refuse_head_without_get(request: web.Request) -> None:
    """Faust routes HEAD to every view and answers it with the view's GET, even when it has none."""
    if request.method != "HEAD":
        return
    methods = _route_methods(request)
    if methods and "GET" not in methods:
        raise web.HTTPMethodNotAllowed("HEAD", methods)


def _route_methods(request: web.Request) -> set[str]:
    resource = request.match_info.route.resource
    return set() if resource is None else {route.method for route in resource}


def _allowed(methods: Iterable[str]) -> list[str]:
    """The methods a route answers: HEAD only along with GET."""
    allowed = set(methods)
    if "GET" not in allowed:
        allowed.discard("HEAD")
    return sorted(allowed)


def _message(request: web.Request, exc: web.HTTPException) -> str:
    path = echo(request.rel_url.path)
    if isinstance(exc, web.HTTPNotFound):
        return f"no endpoint at {path}; the endpoints are listed at GET /openapi.json"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(_allowed(exc.allowed_methods))
        return f"{request.method} is not allowed on {path}; allowed: {allowed}"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return (
            f"the request body is larger than the {request.client_max_size} bytes a worker "
            "accepts (2 x DELAYQ_MAX_FORWARD_BYTES + 64 KiB)"
        )
    return exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else exc.reason


def _kept_headers(exc: web.HTTPException) -> dict[str, str]:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return {"Allow": ", ".join(_allowed(exc.allowed_methods))}
    return {name: exc.headers[name] for name in ("Retry-After",) if name in exc.headers}


def _response(
    request: web.Request, status: int, message: str, headers: dict[str, str]
) -> web.Response:
    if request.rel_url.path.startswith(COMPAT_PREFIX):
        reply = compat_http_error(status, message)
    else:
        reply = error_reply(ApiError(status, message))
    return web.json_response(
        reply.body, status=reply.status, headers={**headers, **reply.headers}, dumps=_dumps
    )
