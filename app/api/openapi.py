"""The OpenAPI 3.1 document of the HTTP API (``GET /openapi.json``), schemas from the models."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.api.models import (
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    CancelOut,
    CancelOutcomeOut,
    ClusterStatsOut,
    CompatAddIn,
    CompatJobIdIn,
    CompatJobOut,
    CompatReply,
    ErrorOut,
    HealthOut,
    JobListOut,
    JobOut,
    ScheduledOut,
    ScheduleIn,
    StatsOut,
)

__all__ = ["document"]

_REF = "#/components/schemas/{model}"
_INPUTS: tuple[type[BaseModel], ...] = (ScheduleIn, CompatAddIn, CompatJobIdIn)
_OUTPUTS: tuple[type[BaseModel], ...] = (
    ScheduledOut,
    JobOut,
    JobListOut,
    CancelOut,
    CancelOutcomeOut,
    StatsOut,
    ClusterStatsOut,
    HealthOut,
    ErrorOut,
    CompatReply,
    CompatJobOut,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref(ErrorOut), description)


_TOO_LARGE = "The body is larger than a worker accepts (2 x DELAYQ_MAX_FORWARD_BYTES + 64 KiB)"
_UNAVAILABLE = {
    "description": "Temporarily unavailable (rebalance, recovery, broker or owner unreachable): "
    "retry after Retry-After seconds.",
    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    "content": {"application/json": {"schema": _ref(ErrorOut)}},
}
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": "The job id (URL-encoded UTF-8, 1-1024 bytes).",
    "schema": {"type": "string", "minLength": 1},
}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


def _compat(summary: str, model: type[BaseModel], with_query: bool) -> dict[str, Any]:
    reply = _json(_ref(CompatReply), "code 0 on success, else the error code.")
    too_large = _json(_ref(CompatReply), _TOO_LARGE + " (go-delayqueue's envelope, code 413).")
    ops: dict[str, Any] = {
        "post": {
            "tags": ["go-delayqueue"],
            "summary": summary,
            "requestBody": _body(model),
            "responses": {"200": reply, "413": too_large},
        }
    }
    if with_query:
        ops["get"] = {
            "tags": ["go-delayqueue"],
            "summary": summary + " (query form)",
            "parameters": [
                {"name": "job_id", "in": "query", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {"200": reply},
        }
    return ops


def _paths() -> dict[str, Any]:
    return {
        "/jobs": {
            "post": {
                "tags": ["jobs"],
                "summary": "Schedule a job, once or recurring (replaces a pending job with "
                "the same id)",
                "requestBody": _body(ScheduleIn),
                "responses": {
                    "201": _json(_ref(ScheduledOut), "The ingest record is acknowledged."),
                    "400": _error("The body is not JSON."),
                    "413": _error(_TOO_LARGE + "."),
                    "422": _error("Invalid fields; nothing was written."),
                    "503": _UNAVAILABLE,
                },
            },
            "get": {
                "tags": ["jobs"],
                "summary": "The earliest pending jobs of the whole cluster",
                "parameters": [
                    {
                        "name": "before",
                        "in": "query",
                        "description": "Only jobs due before: epoch ms or ISO-8601 with a zone.",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIST_LIMIT,
                            "default": DEFAULT_LIST_LIMIT,
                        },
                    },
                ],
                "responses": {
                    "200": _json(_ref(JobListOut), "Earliest first."),
                    "422": _error("Invalid query."),
                    "503": _UNAVAILABLE,
                },
            },
        },
        "/jobs/{job_id}": {
            "parameters": [_JOB_ID],
            "get": {
                "tags": ["jobs"],
                "summary": "A pending job (answered by the worker owning its partition)",
                "responses": {
                    "200": _json(_ref(JobOut), "The job."),
                    "404": _error("No pending job with this id."),
                    "422": _error("Invalid id."),
                    "503": _UNAVAILABLE,
                },
            },
            "delete": {
                "tags": ["jobs"],
                "summary": "Cancel a pending job (a recurring job: its series)",
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "description": "true: write the cancel whatever the job's state and "
                        "answer with what applying it found (200), or 202 if the owner did not "
                        "apply it within 10 s.",
                        "schema": {"type": "boolean", "default": False},
                    }
                ],
                "responses": {
                    "200": _json(_ref(CancelOutcomeOut), "With wait=true: who won."),
                    "202": _json(_ref(CancelOut), "The cancel record is acknowledged."),
                    "404": _error("No pending job with this id."),
                    "409": _error(
                        "The job was already forwarded (a one-shot job; a recurring job's "
                        "series ends whatever its current occurrence does)."
                    ),
                    "422": _error("Invalid id."),
                    "503": _UNAVAILABLE,
                },
            },
        },
        "/stats": {
            "get": {
                "tags": ["operations"],
                "summary": "This worker's statistics, or the cluster's with cluster=1",
                "parameters": [
                    {
                        "name": "cluster",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
                    }
                ],
                "responses": {
                    "200": _json(
                        {"anyOf": [_ref(StatsOut), _ref(ClusterStatsOut)]},
                        "StatsOut for one worker, ClusterStatsOut with cluster=1.",
                    ),
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/metrics": {
            "get": {
                "tags": ["operations"],
                "summary": "Prometheus metrics of this worker",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/health": {
            "get": {
                "tags": ["operations"],
                "summary": "200 once this worker's tables are recovered, 503 before",
                "responses": {
                    "200": _json(_ref(HealthOut), "Ready."),
                    "503": _json(_ref(HealthOut), "Recovering or rebalancing."),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["operations"],
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
            }
        },
        "/delay-queue/api/jobs/add": _compat("go-delayqueue: add a job", CompatAddIn, False),
        "/delay-queue/api/jobs/remove": _compat("go-delayqueue: remove a job", CompatJobIdIn, True),
        "/delay-queue/api/jobs/get": _compat("go-delayqueue: get a job", CompatJobIdIn, True),
    }


@cache
def document(version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    inputs = [(model, "validation") for model in _INPUTS]
    outputs = [(model, "serialization") for model in _OUTPUTS]
    _, defs = models_json_schema([*inputs, *outputs], ref_template=_REF)  # type: ignore[list-item]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "delayq",
            "version": version,
            "description": "A durable delay queue for Apache Kafka. Every worker answers every "
            "endpoint; reads of one job are routed to the worker owning its partition. Every "
            "error is JSON: ErrorOut, or CompatReply under /delay-queue/ (code: the HTTP "
            "status). Besides the answers listed per operation: 404 for a path that is no "
            "endpoint, 405 with Allow for a method an endpoint does not take.",
        },
        "paths": _with_auth(_paths()),
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Needed only when the workers run with DELAYQ_API_TOKEN.",
                }
            },
        },
    }


#: Operations that change jobs: they need the bearer token when one is configured.
_MUTATING = (
    ("/jobs", "post"),
    ("/jobs/{job_id}", "delete"),
    ("/delay-queue/api/jobs/add", "post"),
    ("/delay-queue/api/jobs/remove", "post"),
    ("/delay-queue/api/jobs/remove", "get"),
)


def _with_auth(paths: dict[str, Any]) -> dict[str, Any]:
    for path, method in _MUTATING:
        operation = paths.get(path, {}).get(method)
        if operation is None:
            continue
        # Optional security: {} means "no token needed" for workers without DELAYQ_API_TOKEN.
        operation["security"] = [{"bearer": []}, {}]
        operation["responses"]["401"] = _json(
            {"type": "object"}, "DELAYQ_API_TOKEN is set and the bearer token is missing or wrong."
        )
    return paths
