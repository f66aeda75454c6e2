"""Property-based: requests generated from ``/openapi.json`` never get a 5xx from a live worker.

Schemathesis builds valid and invalid requests for every operation of the document the worker
serves; each answer must be below 500, documented (status code and content type) and match its
documented schema. Bounded: ~100 examples, a few tens of seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.embedded import EmbeddedBroker
from tests.integration.test_http_api import Api, Setup, start_module_worker

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 100


@pytest.fixture(scope="module")
def setup(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    ns, worker = start_module_worker(broker, tmp_path_factory.mktemp("http-fuzz"))
    try:
        yield Setup(ns, broker.bootstrap, worker, Api(worker.web_port))
    finally:
        worker.stop()


def test_no_generated_request_gets_a_server_error_or_an_undocumented_answer(
    setup: Setup,
) -> None:
    # Given the document the worker serves
    document = setup.api.get("/openapi.json").json
    schema = schemathesis.openapi.from_dict(document)
    base_url = f"http://127.0.0.1:{setup.worker.web_port}"
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]

    # When requests generated from it are sent, valid and invalid ones
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def check(case: schemathesis.Case) -> None:
        # Then every answer is below 500, documented, and matches its schema
        response = case.call(base_url=base_url, timeout=30)
        case.validate_response(response, checks=checks)

    check()
