"""The web server's own errors as JSON, on a bare aiohttp application with the middleware.

The same routes shapes as the worker's (Faust registers HEAD with every view); the worker itself
is exercised in ``tests/integration/test_http_robustness.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.api.middleware import json_errors

MAX_BODY = 1_000


async def _read(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"size": len(body)})


async def _fail(request: web.Request) -> web.Response:
    raise RuntimeError("boom")


def _application() -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_BODY)
    for method in ("GET", "HEAD", "POST"):
        app.router.add_route(method, "/jobs", _read)
    for method in ("HEAD", "POST"):  # as Faust registers a POST-only view
        app.router.add_route(method, "/delay-queue/api/jobs/add", _read)
    app.router.add_route("GET", "/fail", _fail)
    return app


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(_application())) as test_client:
        yield test_client


async def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert body["code"] == status
    return body


async def test_an_unknown_path_is_a_json_404_naming_it(client: TestClient[Any, Any]) -> None:
    body = await _error(await client.delete("/jobs/"), 404)
    assert body == {
        "code": 404,
        "message": "no endpoint at '/jobs/'; the endpoints are listed at GET /openapi.json",
    }


async def test_a_long_unknown_path_is_echoed_in_part(client: TestClient[Any, Any]) -> None:
    body = await _error(await client.get("/" + "a" * 4_000), 404)
    assert "(4001 characters)" in body["message"]
    assert len(body["message"]) < 150


async def test_another_method_is_a_json_405_with_allow(client: TestClient[Any, Any]) -> None:
    response = await client.put("/jobs")
    body = await _error(response, 405)
    assert response.headers["Allow"] == "GET, HEAD, POST"
    assert body["message"] == "PUT is not allowed on '/jobs'; allowed: GET, HEAD, POST"


async def test_go_delayqueue_paths_get_its_envelope(client: TestClient[Any, Any]) -> None:
    body = await _error(await client.get("/delay-queue/api/jobs/nope"), 404)
    assert body["data"] is None
    response = await client.put("/delay-queue/api/jobs/add")
    body = await _error(response, 405)
    # HEAD is no method of a route without GET
    assert response.headers["Allow"] == "POST"
    assert body == {
        "code": 405,
        "message": "PUT is not allowed on '/delay-queue/api/jobs/add'; allowed: POST",
        "data": None,
    }


async def test_head_without_a_get_is_405(client: TestClient[Any, Any]) -> None:
    response = await client.head("/delay-queue/api/jobs/add")
    assert (response.status, response.headers["Allow"]) == (405, "POST")
    assert (await client.head("/jobs")).status == 200


async def test_a_body_over_the_limit_is_a_json_413(client: TestClient[Any, Any]) -> None:
    body = await _error(await client.post("/jobs", data=b"x" * (MAX_BODY + 1)), 413)
    assert body["message"].startswith("the request body is larger than the 1000 bytes")
    compat = await _error(await client.post("/delay-queue/api/jobs/add", data=b"x" * 2_000), 413)
    assert compat["data"] is None
    # And a body within the limit is read
    assert (await client.post("/jobs", data=b"x" * MAX_BODY)).status == 200


async def test_an_escaped_exception_is_a_json_500(client: TestClient[Any, Any]) -> None:
    body = await _error(await client.get("/fail"), 500)
    assert body["message"] == "internal error (see the worker's log)"
