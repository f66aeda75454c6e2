"""The recurring-job fields as the API, the CLI and the client check them (app/rule_fields.py)."""

from __future__ import annotations

import pytest

from app.commands import parse_command
from app.jobs import Job
from app.recurrence import MIN_EVERY_MS, Rule
from app.rule_fields import RuleProblem, check_rule, first_occurrence_problem, rule_headers

T = 1_700_000_000_000
CLI = {"cron": "--cron", "timezone": "--timezone", "every": "--every", "until": "--until"}


def test_good_fields_give_the_rule_and_no_fields_a_one_shot_job() -> None:
    assert check_rule(" 0 9 * * 1-5 ", None, "Europe/Berlin", T) == (
        Rule(cron="0 9 * * 1-5", timezone="Europe/Berlin", until_ms=T),
        [],
    )
    assert check_rule(None, 30_000, None, None) == (Rule(every_ms=30_000), [])
    assert check_rule(None, None, None, None) == (None, [])


@pytest.mark.parametrize(
    ("fields", "problems"),
    [
        (("61 * * * *", None, None, None), [("cron", "'61 * * * *' is not a cron rule: Bad")]),
        ((None, 500, None, None), [("every", f"500 is below the minimum of {MIN_EVERY_MS} ms")]),
        (("@daily", 60_000, None, None), [("cron", "give cron or every, not both")]),
        ((None, 60_000, "UTC", None), [("timezone", "applies to a cron rule only")]),
        ((None, None, None, T), [("until", "needs cron or every")]),
        # every problem, not only the first parse_rule meets
        (
            ("61 * * * *", None, "Mars/Olympus", None),
            [("timezone", "'Mars/Olympus' is not an IANA"), ("cron", "'61 * * * *' is not")],
        ),
        (
            (None, 500, "UTC", None),
            [("timezone", "applies to a cron rule only"), ("every", "500 is below")],
        ),
        (
            (None, None, "UTC", T),
            [("timezone", "applies to a cron rule only"), ("until", "needs cron or every")],
        ),
        (
            ("61 * * * *", 500, None, None),
            [("cron", "give cron or every"), ("cron", "'61 * * * *'"), ("every", "500 is")],
        ),
    ],
)
def test_each_problem_is_named_by_its_field(
    fields: tuple[str | None, int | None, str | None, int | None],
    problems: list[tuple[str, str]],
) -> None:
    # Given fields the worker would dead-letter / When checked
    rule, found = check_rule(*fields)
    # Then there is no rule, and each problem names its field, not the header
    assert rule is None
    assert [p.field for p in found] == [field for field, _start in problems], found
    for problem, (_field, start) in zip(found, problems, strict=True):
        assert problem.message.startswith(start), problem
        assert "delayq-" not in problem.message


def test_other_fields_are_named_as_the_surface_calls_them() -> None:
    _rule, found = check_rule("@daily", 60_000, None, None, CLI)
    assert found == [RuleProblem("cron", "give --cron or --every, not both")]
    _rule, found = check_rule(None, None, "UTC", None, CLI)
    assert found == [RuleProblem("timezone", "applies to a --cron rule only")]


def test_a_series_may_not_end_before_it_starts_nor_start_after_9999() -> None:
    rule = Rule(every_ms=60_000, until_ms=T)
    assert first_occurrence_problem(rule, T) is None
    assert first_occurrence_problem(rule, T + 1) == RuleProblem(
        "until",
        "2023-11-14T22:13:20.000Z is before the first occurrence (2023-11-14T22:13:20.001Z)",
    )
    assert first_occurrence_problem(Rule(cron="@daily"), 253_402_300_800_000) == RuleProblem(
        "cron", "the first occurrence is beyond year 9999"
    )
    assert first_occurrence_problem(Rule(every_ms=1000), 253_402_300_800_000) == RuleProblem(
        "every", "the first occurrence is beyond year 9999"
    )


@pytest.mark.parametrize(
    "rule",
    [
        Rule(cron="0 9 * * 1-5", timezone="Europe/Berlin"),
        Rule(cron="@hourly", until_ms=T + 86_400_000),
        Rule(every_ms=1_000),
        Rule(every_ms=90_000, until_ms=T + 600_000),
    ],
)
def test_the_headers_carry_the_rule_to_the_worker(rule: Rule) -> None:
    # Given a schedule record with a rule's headers and no due time
    headers = [("delayq-target", b"out"), *rule_headers(rule)]
    # When the worker parses it
    job = parse_command(
        b"j", b"v", headers, timestamp_ms=T, version=1, forbidden_targets=frozenset()
    )
    # Then it has the same rule, first due at the rule's first occurrence after the timestamp
    assert isinstance(job, Job)
    assert job.rule == rule
    assert job.due_ms == rule.first_after(T)
