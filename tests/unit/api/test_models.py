"""The HTTP API's request checks and JSON forms (no worker, no broker)."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from pydantic import BaseModel

from app.api.models import (
    ECHO_CHARS,
    CompatAddIn,
    CompatJobIdIn,
    JobOut,
    ListQuery,
    ScheduleIn,
    echo,
    error_reply,
    job_out,
    parse_model,
)
from app.commands import parse_command
from app.errors import ApiError
from app.jobs import Job, JobStatus
from app.recurrence import Rule

NOW = 1_700_000_000_000
FORBIDDEN = frozenset({"delayq-ingest"})


def resolve(body: dict[str, Any], max_bytes: int = 1_000_000) -> Any:
    return parse_model(ScheduleIn, body).resolve(NOW, FORBIDDEN, max_bytes)


def problems(body: Any, max_bytes: int = 1_000_000) -> dict[str, str]:
    with pytest.raises(ApiError) as caught:
        resolve(body, max_bytes)
    assert caught.value.status == 422
    reply = error_reply(caught.value)
    assert reply.body["code"] == 422
    return {e["field"]: e["message"] for e in reply.body["errors"]}


@pytest.mark.parametrize(
    ("delay", "due"),
    [
        (0, NOW),
        (1500, NOW + 1500),
        (2.4, NOW + 2),
        ("90s", NOW + 90_000),
        ("1h30m", NOW + 5_400_000),
        ("2d", NOW + 172_800_000),
    ],
)
def test_a_delay_is_milliseconds_or_a_duration_from_now(delay: Any, due: int) -> None:
    assert resolve({"target": "t", "delay": delay}).due_ms == due


@pytest.mark.parametrize(
    ("at", "due"),
    [
        (5, 5),
        ("1700000000123", 1_700_000_000_123),
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-15T00:13:20+02:00", NOW),
    ],
)
def test_at_is_epoch_ms_or_iso_with_a_zone(at: Any, due: int) -> None:
    assert resolve({"target": "t", "at": at}).due_ms == due


def test_a_schedule_becomes_the_contract_headers_with_an_absolute_due_time() -> None:
    # Given a request with every optional field
    schedule = resolve(
        {
            "id": "job-1",
            "target": "orders",
            "delay": "1s",
            "key": "k",
            "value_base64": base64.b64encode(b"\x00\xff").decode(),
            "headers": [
                {"name": "a", "value": "1"},
                {"name": "b", "value_base64": "/w=="},
                {"name": "c"},
            ],
        }
    )
    # Then the ingest record carries the producer's headers, then the contract's
    assert schedule.job_id_bytes == b"job-1"
    assert schedule.value == b"\x00\xff"
    assert schedule.ingest_headers() == [
        ("a", b"1"),
        ("b", b"\xff"),
        ("c", None),
        ("delayq-target", b"orders"),
        ("delayq-due-ms", str(NOW + 1000).encode()),
        ("delayq-key", b"k"),
    ]


def test_headers_may_be_an_object_and_a_missing_id_is_generated() -> None:
    schedule = resolve({"target": "t", "at": 1, "headers": {"x": "y"}, "value": "v"})
    assert schedule.headers == [("x", b"y")]
    assert len(schedule.job_id) == 32
    assert schedule.value == b"v"
    assert resolve({"target": "t", "at": 1}).value is None  # a delayed tombstone


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"delay": 1}, "target"),
        ({"target": "a b", "delay": 1}, "target"),
        ({"target": "delayq-ingest", "delay": 1}, "target"),
        ({"target": "t"}, "delay"),
        ({"target": "t", "delay": 1, "at": 1}, "delay"),
        ({"target": "t", "delay": "30"}, "delay"),
        ({"target": "t", "delay": "-1s"}, "delay"),
        ({"target": "t", "delay": False}, "delay"),
        ({"target": "t", "delay": [1]}, "delay"),
        ({"target": "t", "delay": float("nan")}, "delay"),
        ({"target": "t", "at": "2030-01-01T00:00:00"}, "at"),
        ({"target": "t", "at": 1.5}, "at"),
        ({"target": "t", "delay": 253_402_300_799_999}, "delay"),
        ({"target": "t", "at": 1, "id": ""}, "id"),
        ({"target": "t", "at": 1, "id": "é" * 513}, "id"),
        ({"target": "t", "at": 1, "id": "\ud800"}, "id"),
        ({"target": "t", "at": 1, "value": "\udfff"}, "value"),
        ({"target": "t", "at": 1, "value": "a", "value_base64": "YQ=="}, "value"),
        ({"target": "t", "at": 1, "key": "a", "key_base64": "YQ=="}, "key"),
        ({"target": "t", "at": 1, "value_base64": "not base64!"}, "value_base64"),
        ({"target": "t", "at": 1, "headers": {"delayq-target": "x"}}, "headers.0.name"),
        ({"target": "t", "at": 1, "headers": [{"name": ""}]}, "headers.0.name"),
        (
            {
                "target": "t",
                "at": 1,
                "headers": [{"name": "a", "value": "x", "value_base64": "eA=="}],
            },
            "headers.0",
        ),
        ({"target": "t", "at": 1, "headers": "x"}, "headers"),
        ({"target": "t", "at": 1, "extra": 1}, "extra"),
        ({"target": "t", "cron": 5}, "cron"),
        ({"target": "t", "cron": "\ud800"}, "cron"),
        ({"target": "t", "every": "30"}, "every"),
        ({"target": "t", "every": True}, "every"),
        ({"target": "t", "every": "1s", "until": "tomorrow"}, "until"),
        ({"target": "t", "every": "1s", "until": 1.5}, "until"),
    ],
)
def test_each_bad_field_is_named(body: dict[str, Any], field: str) -> None:
    found = problems(body)
    assert field in found, found
    assert found[field]


def test_a_body_that_is_not_an_object_is_a_422_on_the_body() -> None:
    assert "body" in problems([1])


def test_a_record_too_large_to_forward_is_refused_before_it_is_written() -> None:
    found = problems({"target": "t", "at": 1, "value": "x" * 2_000}, max_bytes=1_024)
    assert "more than the worker's limit of 1024" in found["value"]


def test_job_out_shows_text_or_base64() -> None:
    job = Job(b"\xffid", 1_000, "t", b"k", b"\x80", (("h", b"v"), ("b", b"\xfe"), ("n", None)), 7)
    out = job_out(job, JobStatus.IN_FLIGHT, 3)
    assert JobOut.model_validate(out)
    assert out == {
        "id": None,
        "id_base64": base64.b64encode(b"\xffid").decode(),
        "target": "t",
        "due_ms": 1_000,
        "due_at": "1970-01-01T00:00:01.000Z",
        "key": "k",
        "value": None,
        "value_base64": "gA==",
        "headers": [
            {"name": "h", "value": "v"},
            {"name": "b", "value": None, "value_base64": "/g=="},
            {"name": "n", "value": None},
        ],
        "status": "in_flight",
        "partition": 3,
        "rule": None,
    }


def test_list_query_defaults_and_bounds() -> None:
    assert parse_model(ListQuery, {}).limit == 100
    assert (
        parse_model(ListQuery, {"limit": "1000", "before": "1970-01-01T00:00:01Z"}).before_ms
        == 1000
    )
    for bad in ({"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"before": "soon"}):
        with pytest.raises(ApiError):
            parse_model(ListQuery, bad)


def test_compat_add_takes_go_delayqueue_types_only() -> None:
    ok = CompatAddIn.model_validate({"topic": "order", "delay": 3600, "body": "{}", "extra": 1})
    assert (ok.topic, ok.delay, ok.body, ok.id) == ("order", 3600, "{}", None)
    for bad in (
        {"topic": "o", "delay": "1"},
        {"topic": "o", "delay": 1.0},
        {"topic": "", "delay": 1},
        {"topic": "o", "delay": 1, "body": 1},
    ):
        with pytest.raises(ValueError):
            CompatAddIn.model_validate(bad)


# --- messages: the API's words, not pydantic's ----------------------------------------------

#: Words of pydantic and Python a client should never read: class names, jargon, type names.
JARGON = re.compile(
    r"ScheduleIn|HeaderIn|Compat\w+In|ListQuery|instance of|Input should|dictionary|model_type"
    r"|Value error|Extra inputs|Field required|\b(str|int|dict|list|NoneType|float|bool)\b"
)


def messages(model: type[BaseModel], body: Any) -> dict[str, str]:
    with pytest.raises(ApiError) as caught:
        parse_model(model, body)
    return {e.field: e.message for e in caught.value.errors}


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (ScheduleIn, []),
        (ScheduleIn, None),
        (ScheduleIn, "text"),
        (ScheduleIn, {"target": 5, "delay": 1}),
        (ScheduleIn, {"target": "t", "delay": [1]}),
        (ScheduleIn, {"target": "t", "delay": None, "at": {"x": 1}}),
        (ScheduleIn, {"target": "t", "delay": 1, "value": True}),
        (ScheduleIn, {"target": "t", "delay": 1, "headers": "abc"}),
        (ScheduleIn, {"target": "t", "delay": 1, "headers": [5, ["a", "b"], None]}),
        (ScheduleIn, {"target": "t", "delay": 1, "headers": [{"name": 1, "value": 2}]}),
        (ScheduleIn, {"target": "t", "delay": 1, "headers": [{"value": "v", "x": 1}]}),
        (ScheduleIn, {"target": "t", "delay": 1, "headers": [{"name": ""}]}),
        (ScheduleIn, {"delay": 1, "surprise": 1}),
        (CompatAddIn, [1]),
        (CompatAddIn, {"topic": "", "delay": "1", "body": None}),
        (CompatJobIdIn, {}),
        (CompatJobIdIn, {"job_id": 7}),
        (ListQuery, {"limit": "abc"}),
        (ListQuery, {"limit": "0"}),
        (ListQuery, {"limit": "1001"}),
        (ListQuery, {"limit": "9" * 5_000}),
    ],
)
def test_no_message_names_a_class_or_pydantic_terms(model: type[BaseModel], body: Any) -> None:
    found = messages(model, body)
    assert found
    for field, message in found.items():
        assert message and not JARGON.search(message), (field, message)


@pytest.mark.parametrize("body", [[], None, [{"target": "t"}], 42])
def test_a_body_that_is_not_an_object_says_so(body: Any) -> None:
    message = messages(ScheduleIn, body)["body"]
    assert message.startswith("the request body must be a JSON object (fields: id, target, ")
    kind = {list: "array", type(None): "null", int: "integer"}[type(body)]
    assert message.endswith(f", got {kind}")


def test_headers_of_another_type_name_both_accepted_forms() -> None:
    assert messages(ScheduleIn, {"target": "t", "at": 1, "headers": "abc"})["headers"] == (
        'must be an object of names to text values, or an array of {"name", "value" | '
        '"value_base64"} objects, got string'
    )
    found = messages(ScheduleIn, {"target": "t", "at": 1, "headers": [["a", "b"]]})
    assert found["headers.0"] == (
        "must be a JSON object (fields: name, value, value_base64), got array"
    )


def test_an_unknown_field_lists_the_known_ones() -> None:
    found = messages(ScheduleIn, {"target": "t", "at": 1, "valeu": "x"})
    assert found["valeu"] == (
        "unknown field (fields: id, target, delay, at, cron, timezone, every, until, key, "
        "key_base64, value, value_base64, headers)"
    )
    found = messages(ScheduleIn, {"target": "t", "at": 1, "headers": [{"name": "a", "vlaue": 1}]})
    assert found["headers.0.vlaue"] == "unknown field (fields: name, value, value_base64)"


def test_types_are_named_as_in_json() -> None:
    assert messages(ScheduleIn, {"target": "t", "delay": [1]})["delay"] == (
        "must be a number or a string, got array"
    )
    assert messages(ScheduleIn, {"target": "t", "at": 1.5})["at"] == (
        "must be an integer or a string, got number"
    )
    assert messages(CompatAddIn, {"topic": "t", "delay": "1"})["delay"] == (
        "must be an integer, got string"
    )
    assert messages(ScheduleIn, {"target": None, "at": 1})["target"] == "must be a string, got null"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"target": "t" * 300, "at": 1}, "target"),
        ({"target": "t", "delay": "x" * 300}, "delay"),
        ({"target": "t", "at": "y" * 300}, "at"),
    ],
)
def test_long_input_is_echoed_in_part(body: dict[str, Any], field: str) -> None:
    message = messages(ScheduleIn, body)[field]
    assert "…' (300 characters)" in message, message
    assert len(message) < 160, message


def test_echo_quotes_short_values_whole_and_long_ones_in_part() -> None:
    assert echo("short") == "'short'"
    assert echo("a" * ECHO_CHARS) == repr("a" * ECHO_CHARS)
    assert echo("a" * 300) == f"'{'a' * ECHO_CHARS}…' (300 characters)"
    assert echo(10**60) == f"{'1' + '0' * (ECHO_CHARS - 1)}… (61 characters)"


# --- recurring jobs -----------------------------------------------------------------------------


def reparsed(schedule: Any) -> Job:
    """What the worker makes of the ingest record the API writes."""
    job = parse_command(
        schedule.job_id_bytes,
        schedule.value,
        schedule.ingest_headers(),
        timestamp_ms=NOW,
        version=1,
        forbidden_targets=FORBIDDEN,
    )
    assert isinstance(job, Job)
    return job


@pytest.mark.parametrize(
    ("body", "rule", "due"),
    [
        # without delay or at: the rule's first occurrence after now
        ({"every": "30s"}, Rule(every_ms=30_000), NOW + 30_000),
        ({"every": 1000.4}, Rule(every_ms=1_000), NOW + 1_000),
        ({"cron": "@daily"}, Rule(cron="@daily"), 1_700_006_400_000),
        (
            {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin", "until": "2024-01-01T00:00:00Z"},
            Rule(cron="0 9 * * 1-5", timezone="Europe/Berlin", until_ms=1_704_067_200_000),
            1_700_035_200_000,  # Wednesday 2023-11-15 09:00 in Berlin (08:00Z)
        ),
        # with one of them: the first occurrence they say
        ({"every": "1h", "delay": "5s"}, Rule(every_ms=3_600_000), NOW + 5_000),
        ({"cron": "@hourly", "at": 5, "until": 5}, Rule(cron="@hourly", until_ms=5), 5),
    ],
)
def test_a_recurring_schedule_carries_its_rule_to_the_worker(
    body: dict[str, Any], rule: Rule, due: int
) -> None:
    # Given a recurring schedule / When resolved
    schedule = resolve({"target": "t", "id": "r", **body})
    # Then its first occurrence is due, and the record the worker reads has the same rule
    assert (schedule.rule, schedule.due_ms) == (rule, due)
    job = reparsed(schedule)
    assert (job.rule, job.due_ms) == (rule, due)


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"cron": "61 * * * *"}, {"cron": "'61 * * * *' is not a cron rule: Bad minute"}),
        (
            {"cron": "0 9 * * *", "timezone": "Europe"},
            {"timezone": "'Europe' is not an IANA time zone (like Europe/Berlin or UTC)"},
        ),
        ({"every": 999}, {"every": "999 is below the minimum of 1000 ms"}),
        ({"cron": "@daily", "every": "1m"}, {"cron": "give cron or every, not both"}),
        ({"every": "1m", "timezone": "UTC"}, {"timezone": "applies to a cron rule only"}),
        ({"delay": "1s", "until": 5}, {"until": "needs cron or every"}),
        (
            {"every": "1m", "until": NOW + 59_999},
            {
                "until": "2023-11-14T22:14:19.999Z is before the first occurrence "
                "(2023-11-14T22:14:20.000Z)"
            },
        ),
        (
            {"cron": "@hourly", "at": 5, "until": 4},
            {
                "until": "1970-01-01T00:00:00.004Z is before the first occurrence "
                "(1970-01-01T00:00:00.005Z)"
            },
        ),
        (
            {},
            {
                "delay": "give exactly one of delay or at (neither was given), or a recurring "
                "rule: cron or every"
            },
        ),
        # every problem at once
        (
            {"cron": "* * *", "timezone": "Mars/Olympus", "delay": 1, "at": 1},
            {
                "timezone": "'Mars/Olympus' is not an IANA time zone (like Europe/Berlin or UTC)",
                "cron": "'* * *' is not a cron rule: it needs five fields (minute hour "
                "day-of-month month day-of-week)",
                "delay": "give exactly one of delay or at (both were given)",
            },
        ),
    ],
)
def test_a_bad_rule_is_a_422_naming_each_field_at_fault(
    body: dict[str, Any], errors: dict[str, str]
) -> None:
    assert problems({"target": "t", **body}) == errors


def test_a_long_cron_rule_is_echoed_in_part() -> None:
    message = problems({"target": "t", "cron": "1 " * 300})["cron"]
    assert message.startswith("'1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 …' (")
    assert len(message) < 160, message


def test_job_out_shows_a_recurring_jobs_rule_and_null_for_a_one_shot_job() -> None:
    one_shot = Job(b"j", 1_000, "t", None, None, (), 1)
    every = Job(b"j", 1_000, "t", None, None, (), 1, rule=Rule(every_ms=30_000, until_ms=0))
    cron = Job(b"j", 1_000, "t", None, None, (), 1, rule=Rule("0 9 * * 1-5", None, "Europe/Berlin"))
    assert job_out(one_shot, JobStatus.PENDING, 0)["rule"] is None
    assert job_out(every, JobStatus.PENDING, 0)["rule"] == {
        "cron": None,
        "timezone": None,
        "every_ms": 30_000,
        "until_ms": 0,
        "description": "every 30 s, until 1970-01-01T00:00:00Z",
    }
    shown = job_out(cron, JobStatus.IN_FLIGHT, 0)
    assert JobOut.model_validate(shown)
    assert shown["rule"] == {
        "cron": "0 9 * * 1-5",
        "timezone": "Europe/Berlin",
        "every_ms": None,
        "until_ms": None,
        "description": "At 09:00 on Monday through Friday (Europe/Berlin)",
    }
