"""go-delayqueue's HTTP API (tengzbiao/go-delayqueue), so its users switch without code changes.

Three endpoints under ``/delay-queue/api/jobs``, POST with a JSON body as its README documents
(the GET with a ``?job_id=`` query that its router also answers works too). Every answer is HTTP
200 with ``{"code", "message", "data"}``, as there; the codes are the seed's:

- 0 ok; ``add`` -> ``{"job_id"}``, ``get`` -> ``{topic, id, exec_time, delay, body}``;
- 400 bad parameters (bad JSON, missing or mistyped fields, ``delay`` 0, a bad topic);
- 10001 ``delay`` out of 1 .. 2^31 seconds; 10002 add failed (the broker did not acknowledge);
- 10003 remove failed (the job was already forwarded, or its owner is unavailable);
- 10004 the job could not be looked up (``get``: its owner answered an error);
- 10005 (delayq's own) the job's worker is not known right now (rebalance): try again.

An absent job is no error, as go-delayqueue's README documents: ``get`` answers code 0 with
``data`` null, and ``remove`` of an unknown job is code 0 (idempotent).

``topic`` is the target topic, ``body`` the forwarded value (UTF-8), ``delay`` whole seconds.
``remove`` and ``get`` run the native routed ``DELETE``/``GET /jobs/{id}``, so they work on any
worker whatever partition the job lives in. ``delay`` in ``get`` is the time left (the original
delay is not stored); ``exec_time`` is the due time in epoch seconds.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from app.api import handlers
from app.api.models import (
    CompatAddIn,
    CompatJobIdIn,
    FieldError,
    Reply,
    ScheduleIn,
    error_reply,
    field_errors,
)
from app.errors import ApiError, CompatApiError
from app.times import now_ms

__all__ = ["add", "get", "remove"]

OK = 0
BAD_PARAMS = 400
BAD_DELAY = 10001
ADD_FAILED = 10002
REMOVE_FAILED = 10003
GET_FAILED = 10004
#: Not in the seed: the job's owner is not known right now (rebalance); retry.
UNAVAILABLE = 10005
MAX_DELAY_S = 1 << 31
_M = TypeVar("_M", bound=BaseModel)
#: Native field names as go-delayqueue calls them.
_FIELD_NAMES = {"target": "topic", "value": "body"}


def _reply(code: int, message: str, data: dict[str, Any] | None = None) -> Reply:
    return Reply(200, {"code": code, "message": message, "data": data})


def _bad(errors: list[FieldError]) -> CompatApiError:
    problems = "; ".join(f"{_FIELD_NAMES.get(e.field, e.field)}: {e.message}" for e in errors)
    return CompatApiError(BAD_PARAMS, f"invalid parameters: {problems}")


def _parse(model: type[_M], body: bytes, query: Mapping[str, str]) -> _M:
    """The request's fields: the JSON body, else (GET, as go-delayqueue's router) the query."""
    try:
        data = handlers.parse_json(body) if body.strip() else dict(query)
        return model.model_validate(data)
    except ApiError as exc:
        raise _bad([FieldError(field="body", message=exc.message)]) from None
    except ValidationError as exc:
        raise _bad(field_errors(exc, model)) from None


async def _add(body: bytes) -> Reply:
    request = _parse(CompatAddIn, body, {})
    if request.delay == 0:
        raise _bad([FieldError(field="delay", message="is required")])
    if not 0 < request.delay <= MAX_DELAY_S:
        return _reply(BAD_DELAY, "delay must be 1 to 2^31 seconds")
    native = {
        "id": request.id or None,
        "target": request.topic,
        "delay": request.delay * 1000,
        "value": request.body,
    }
    try:
        schedule = ScheduleIn.model_validate(native).resolve(
            now_ms(), handlers.FORBIDDEN_TARGETS, handlers.settings.max_forward_bytes
        )
    except ValidationError as exc:
        raise _bad(field_errors(exc, ScheduleIn)) from None
    except ApiError as exc:
        raise _bad(exc.errors) from None
    try:
        await handlers.produce_schedule(schedule)
    except ApiError as exc:
        return _reply(ADD_FAILED, f"adding the job failed: {exc.message}")
    return _reply(OK, "ok", {"job_id": schedule.job_id})


async def add(body: bytes) -> Reply:
    """``/delay-queue/api/jobs/add`` ``{"topic", "delay", "body", "id"?}``."""
    try:
        return await _add(body)
    except CompatApiError as rejected:
        return _reply(rejected.code, rejected.message)


def _path(job_id: str) -> str:
    return "/jobs/" + quote(job_id, safe="")


def _json(reply: Reply) -> Any:
    return handlers.parse_json(reply.body) if isinstance(reply.body, bytes) else reply.body


async def _native(method: str, job_id: str) -> Reply:
    """The native routed GET/DELETE; an error becomes its reply."""
    call = handlers.get_job if method == "GET" else handlers.cancel_job
    try:
        return await call(job_id, routed=False, path_qs=_path(job_id))
    except ApiError as exc:
        return error_reply(exc)


async def remove(body: bytes, query: Mapping[str, str]) -> Reply:
    """``/delay-queue/api/jobs/remove`` ``{"job_id"}``."""
    try:
        request = _parse(CompatJobIdIn, body, query)
    except CompatApiError as rejected:
        return _reply(rejected.code, rejected.message)
    native = await _native("DELETE", request.job_id)
    if native.status in (202, 404):
        return _reply(OK, "ok")
    if native.status == 422:
        return _reply(BAD_PARAMS, f"invalid parameters: {_json(native)['message']}")
    return _reply(REMOVE_FAILED, f"removing the job failed: {_message(native)}")


def _message(reply: Reply) -> str:
    try:
        return str(_json(reply)["message"])
    except (ApiError, KeyError, TypeError):
        return f"HTTP {reply.status}"


async def get(body: bytes, query: Mapping[str, str]) -> Reply:
    """``/delay-queue/api/jobs/get`` ``{"job_id"}``."""
    try:
        request = _parse(CompatJobIdIn, body, query)
    except CompatApiError as rejected:
        return _reply(rejected.code, rejected.message)
    native = await _native("GET", request.job_id)
    if native.status == 422:
        return _reply(BAD_PARAMS, f"invalid parameters: {_message(native)}")
    if native.status == 503:  # not "not found": the owner is moving (rebalance)
        return _reply(UNAVAILABLE, f"try again: {_message(native)}")
    if native.status == 404:  # go-delayqueue's README: an absent job is code 0, data null
        return _reply(OK, f"job not found ({_message(native)})")
    if native.status != 200:
        return _reply(GET_FAILED, f"looking up the job failed: {_message(native)}")
    return _reply(OK, "ok", compat_job(_json(native), now_ms()))


def compat_job(job: Mapping[str, Any], now: int) -> dict[str, Any]:
    """A native job (``JobOut``) as go-delayqueue's ``Job``."""
    if job.get("value_base64") is not None:
        body = base64.b64decode(job["value_base64"]).decode(errors="replace")
    else:
        body = job.get("value") or ""
    job_id = job["id"] if job.get("id") is not None else job.get("id_base64", "")
    due_ms = int(job["due_ms"])
    return {
        "topic": job["target"],
        "id": job_id,
        "exec_time": due_ms // 1000,
        "delay": max(0, math.ceil((due_ms - now) / 1000)),
        "body": body,
    }
