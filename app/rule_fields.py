"""The recurring-job fields as people give them to the HTTP API, the CLI and the Python client.

Each surface checks a rule with :func:`app.recurrence.parse_rule` before it writes anything, so
a rule the worker would dead-letter is refused where it was typed. ``parse_rule`` names the
headers (``delayq-cron``) and stops at the first problem; :func:`check_rule` names the fields
as the surface calls them and lists every problem.

Imported by the light client: the standard library, cronsim and delayq's contract modules only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app import names
from app.durations import format_time_ms
from app.errors import InvalidRecord
from app.recurrence import Rule, parse_rule
from app.times import MAX_DUE_MS

__all__ = [
    "CRON",
    "EVERY",
    "FIELD_NAMES",
    "TIMEZONE",
    "UNTIL",
    "RuleProblem",
    "check_rule",
    "first_occurrence_problem",
    "rule_headers",
    "rule_json",
]

#: The fields, as the HTTP API and the client name them.
CRON, TIMEZONE, EVERY, UNTIL = "cron", "timezone", "every", "until"
FIELD_NAMES: Mapping[str, str] = {CRON: CRON, TIMEZONE: TIMEZONE, EVERY: EVERY, UNTIL: UNTIL}
_FIELD_OF_HEADER = {
    names.HEADER_CRON: CRON,
    names.HEADER_TIMEZONE: TIMEZONE,
    names.HEADER_EVERY_MS: EVERY,
    names.HEADER_UNTIL_MS: UNTIL,
}


@dataclass(frozen=True, slots=True)
class RuleProblem:
    """What is wrong with one field (:data:`CRON`, :data:`TIMEZONE`, :data:`EVERY`,
    :data:`UNTIL`); ``message`` does not repeat the field's name."""

    field: str
    message: str


def check_rule(
    cron: str | None,
    every_ms: int | None,
    timezone: str | None,
    until_ms: int | None,
    field_names: Mapping[str, str] = FIELD_NAMES,
) -> tuple[Rule | None, list[RuleProblem]]:
    """The rule the fields describe (None: a one-shot job), or every problem with them.

    ``field_names``: how the surface calls each field in a message about another one (the
    CLI's ``--cron``).
    """
    try:
        return parse_rule(cron, every_ms, timezone, until_ms), []
    except InvalidRecord:
        pass
    # parse_rule stops at the first problem: each field again, with only the fields its own
    # check needs, so that a problem of one does not hide another's.
    views = (
        (cron, None, None, None),
        (None, every_ms, None, None),
        (cron, every_ms, timezone, None),
        (cron, every_ms, None, until_ms),
    )
    problems: list[RuleProblem] = []
    for view in ((cron, every_ms, timezone, until_ms), *views):
        try:
            parse_rule(*view)
        except InvalidRecord as exc:
            problem = _problem(exc.reason, field_names)
            if problem not in problems:
                problems.append(problem)
    return None, problems


def first_occurrence_problem(rule: Rule, first_ms: int) -> RuleProblem | None:
    """What is wrong with a series whose first occurrence is ``first_ms``: past year 9999,
    or after its end (the worker dead-letters both)."""
    if first_ms > MAX_DUE_MS:
        field = CRON if rule.cron is not None else EVERY
        return RuleProblem(field, "the first occurrence is beyond year 9999")
    if rule.until_ms is not None and rule.until_ms < first_ms:
        return RuleProblem(
            UNTIL,
            f"{format_time_ms(rule.until_ms)} is before the first occurrence "
            f"({format_time_ms(first_ms)})",
        )
    return None


def rule_headers(rule: Rule) -> list[tuple[str, bytes]]:
    """The ingest headers that carry ``rule`` (app/commands.py reads them)."""
    if rule.every_ms is not None:
        out = [(names.HEADER_EVERY_MS, str(rule.every_ms).encode())]
    else:
        out = [
            (names.HEADER_CRON, (rule.cron or "").encode()),
            (names.HEADER_TIMEZONE, rule.timezone.encode()),
        ]
    if rule.until_ms is not None:
        out.append((names.HEADER_UNTIL_MS, str(rule.until_ms).encode()))
    return out


def rule_json(rule: Rule) -> dict[str, Any]:
    """The rule as the HTTP API, the dashboard and ``delayq --json`` show it: its fields
    (null where they do not apply) and its description in words."""
    cron = rule.cron is not None
    return {
        "cron": rule.cron,
        "timezone": rule.timezone if cron else None,
        "every_ms": rule.every_ms,
        "until_ms": rule.until_ms,
        "description": rule.describe(),
    }


def _problem(reason: str, field_names: Mapping[str, str]) -> RuleProblem:
    """A reason of ``parse_rule`` as the problem of the field it is about: the header it
    starts with, else the first one it names ("give delayq-cron or delayq-every-ms, ...")."""
    mentioned = sorted((reason.find(h), h) for h in _FIELD_OF_HEADER if h in reason)
    header = mentioned[0][1]
    message = reason.removeprefix(f"{header} ").removeprefix("= ")
    for other, field in _FIELD_OF_HEADER.items():
        message = message.replace(other, field_names[field])
    return RuleProblem(_FIELD_OF_HEADER[header], message)
