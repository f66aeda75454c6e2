"""The OpenAPI document: complete, self-consistent, generated from the models."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.api.models import ScheduleIn
from app.api.openapi import document


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_every_endpoint_is_documented_and_every_ref_resolves() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    assert {
        ("/jobs", "post"),
        ("/jobs", "get"),
        ("/jobs/{job_id}", "get"),
        ("/jobs/{job_id}", "delete"),
        ("/stats", "get"),
        ("/metrics", "get"),
        ("/health", "get"),
        ("/openapi.json", "get"),
        ("/delay-queue/api/jobs/add", "post"),
        ("/delay-queue/api/jobs/remove", "post"),
        ("/delay-queue/api/jobs/get", "post"),
    } <= {(path, method) for path, ops in doc["paths"].items() for method in ops}
    schemas = doc["components"]["schemas"]
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in schemas
    json.dumps(doc)  # serializable as it is served


def test_request_schemas_are_the_models_own() -> None:
    schema = document()["components"]["schemas"]["ScheduleIn"]
    assert schema["required"] == ["target"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(ScheduleIn.model_fields)


def test_schemathesis_loads_the_document() -> None:
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_dict(document())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13


def test_every_operation_with_a_body_documents_its_413_in_its_envelope() -> None:
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            if "requestBody" not in op:
                continue
            schema = op["responses"]["413"]["content"]["application/json"]["schema"]
            envelope = "CompatReply" if path.startswith("/delay-queue/") else "ErrorOut"
            assert schema == {"$ref": f"#/components/schemas/{envelope}"}, (path, method)


def test_recurring_fields_are_documented_with_their_rules() -> None:
    schemas = document()["components"]["schemas"]
    fields = schemas["ScheduleIn"]["properties"]
    # The rule fields, each described, the DST rule and the minimum interval with them
    for name in ("cron", "timezone", "every", "until"):
        assert fields[name]["description"], name
    assert "first minute after the gap" in fields["cron"]["description"]
    assert "exists twice" in fields["cron"]["description"]
    assert "at least 1000 ms" in fields["every"]["description"]
    assert "rule's first after now" in fields["delay"]["description"]
    # And a job shows its rule: the fields of RuleOut, null for a one-shot job
    rule = schemas["JobOut"]["properties"]["rule"]
    assert {"$ref": "#/components/schemas/RuleOut"} in rule["anyOf"]
    assert set(schemas["RuleOut"]["properties"]) == {
        "cron",
        "timezone",
        "every_ms",
        "until_ms",
        "description",
    }
