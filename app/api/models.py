"""Request and response models of the HTTP API, and the checks that turn a request into a command.

Nothing here needs Faust or Kafka. Every rejection is an :class:`ApiError` with a status and,
for bad input (422), one ``{"field", "message"}`` per problem; a rejected request produces nothing.

Bytes travel as text when they are UTF-8, else base64 in a field with the same name plus
``_base64`` (``value`` / ``value_base64``, ``key`` / ``key_base64``, header values, job ids).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from app import names
from app.durations import format_time_ms, parse_duration_ms, parse_time_ms
from app.errors import ApiError
from app.jobs import Header, Job, JobStatus
from app.names import MAX_JOB_ID_BYTES, valid_topic_name
from app.outcomes import CancelOutcome
from app.recurrence import MIN_EVERY_MS, Rule
from app.rule_fields import (
    RuleProblem,
    check_rule,
    first_occurrence_problem,
    rule_headers,
    rule_json,
)
from app.times import MAX_DUE_MS

__all__ = [
    "COMPAT_PREFIX",
    "DEFAULT_LIST_LIMIT",
    "ECHO_CHARS",
    "MAX_LIST_LIMIT",
    "CancelOut",
    "CancelOutcomeOut",
    "ClusterStatsOut",
    "CompatAddIn",
    "CompatJobIdIn",
    "CompatJobOut",
    "CompatReply",
    "Counters",
    "ErrorOut",
    "FieldError",
    "HeaderOut",
    "HealthOut",
    "JobListOut",
    "JobOut",
    "Lateness",
    "ListQuery",
    "Reply",
    "RuleOut",
    "Schedule",
    "ScheduleIn",
    "ScheduledOut",
    "StatsOut",
    "TotalStats",
    "cancel_outcome_out",
    "compat_http_error",
    "echo",
    "error_reply",
    "field_errors",
    "invalid_request",
    "job_out",
    "json_type",
    "parse_model",
]

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000

_M = TypeVar("_M", bound=BaseModel)


# --- replies and errors -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: JSON ``body`` (or raw bytes when ``content_type`` is set)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


class FieldError(BaseModel):
    """One problem with one field of the request (``field`` is a dotted path)."""

    field: str
    message: str


class ErrorOut(BaseModel):
    """Every error of the native API: the status again, a message, field problems for 422."""

    code: int
    message: str
    errors: list[FieldError] | None = None


def error_reply(exc: ApiError) -> Reply:
    """The HTTP answer for ``exc``: ``{"code", "message", "errors"?}`` and ``Retry-After``."""
    body: dict[str, Any] = {"code": exc.status, "message": exc.message}
    if exc.errors:
        body["errors"] = [e.model_dump() for e in exc.errors]
    headers = {} if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
    return Reply(exc.status, body, headers)


def invalid_request(errors: Sequence[FieldError]) -> ApiError:
    """A 422 :class:`ApiError` listing ``errors``."""
    summary = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return ApiError(422, f"invalid request: {summary}", errors)


def field_errors(exc: ValidationError, model: type[BaseModel] | None = None) -> list[FieldError]:
    """Pydantic's errors as ``FieldError``s a person can act on (``model``: the one validated).

    The one place pydantic's wording is turned into the API's: no class names or pydantic terms,
    JSON type names, and long input echoed only in part (:func:`echo`).
    """
    out: list[FieldError] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        path = ".".join(str(part) for part in loc) or "body"
        message = _shorten_echo(_message(error, model, loc), error.get("input"))
        out.append(FieldError(field=path, message=message))
    return out


def parse_model(model: type[_M], data: Any) -> _M:
    """``data`` validated as ``model``, or a 422 :class:`ApiError` naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(field_errors(exc, model)) from None


# --- messages -----------------------------------------------------------------------------------

#: Input quoted in a message is cut to this many characters.
ECHO_CHARS = 40

#: Pydantic error types -> the API's message (``{got}``: the input's JSON type; the rest: ctx).
_MESSAGES = {
    "missing": "is required",
    "list_type": "must be an array, got {got}",
    "string_type": "must be a string, got {got}",
    "int_type": "must be an integer, got {got}",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "int_parsing_size": "is too large a number",
    "string_too_long": "must have at most {max_length} characters",
    "greater_than": "must be more than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "literal_error": "must be {expected}",
}
#: A JSON type name with its article, for "must be ...".
_A_TYPE = {"integer": "an integer", "number": "a number", "string": "a string"}
_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (type(None), "null"),
    (bool, "boolean"),  # before int: a bool is an int in Python
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)


def json_type(value: object) -> str:
    """The JSON name of ``value``'s type (``array``, not ``list``)."""
    return _json_type_name(type(value))


def _json_type_name(python_type: type) -> str:
    for known, name in _JSON_TYPES:
        if issubclass(python_type, known):
            return name
    return python_type.__name__


def echo(value: object) -> str:
    """``value`` quoted for a message: whole when short, else its start, "…" and its length."""
    text = repr(value)
    if len(text) <= ECHO_CHARS + 2:  # the quotes do not count
        return text
    if isinstance(value, str):
        return f"{value[:ECHO_CHARS] + '…'!r} ({len(value)} characters)"
    return f"{text[:ECHO_CHARS]}… ({len(text)} characters)"


def _shorten_echo(message: str, value: object) -> str:
    """``message`` with a long ``value`` it quotes in full cut by :func:`echo`."""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return message
    quoted = repr(value)
    return message.replace(quoted, echo(value)) if len(quoted) > ECHO_CHARS + 2 else message


def _message(error: Any, model: type[BaseModel] | None, loc: tuple[Any, ...]) -> str:
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    got = json_type(error.get("input"))
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        fields = _fields(_model_at(model, loc))
        shape = f" (fields: {fields})" if fields else ""
        if not loc:
            return f"the request body must be a JSON object{shape}, got {got}"
        return f"must be a JSON object{shape}, got {got}"
    if kind == "extra_forbidden":
        fields = _fields(_model_at(model, loc[:-1]))
        return f"unknown field (fields: {fields})" if fields else "unknown field"
    if kind == "string_too_short":
        minimum = ctx.get("min_length", 1)
        return "must not be empty" if minimum == 1 else f"must have at least {minimum} characters"
    template = _MESSAGES.get(kind)
    if template is not None:
        return template.format(got=got, **ctx)
    return _plain(str(error["msg"]))


def _plain(message: str) -> str:
    """Pydantic's own message with its jargon out (for error types not in ``_MESSAGES``)."""
    message = re.sub(r" or instance of \w+", "", message)
    return message.replace("Input should be", "must be").replace("Input", "the value")


def _fields(model: type[BaseModel] | None) -> str:
    return ", ".join(model.model_fields) if model is not None else ""


def _model_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model validating the value at ``loc`` under ``model`` (list indexes pass through)."""
    for part in loc:
        if model is None:
            return None
        if isinstance(part, str):
            info = model.model_fields.get(part)
            model = _model_in(info.annotation) if info is not None else None
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# --- field helpers ------------------------------------------------------------------------------


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (unpaired surrogate)") from None


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("is not valid base64") from None


def _text_or_b64(data: bytes | None, name: str, out: dict[str, Any]) -> None:
    """``out[name]`` = text if ``data`` is UTF-8, else ``None`` and ``out[name_base64]``."""
    if data is None:
        out[name] = None
        return
    try:
        out[name] = data.decode()
    except UnicodeDecodeError:
        out[name] = None
        out[f"{name}_base64"] = base64.b64encode(data).decode()


def _only_types(*types: type) -> Any:
    names_ = {_json_type_name(t) for t in types}
    if "number" in names_:  # JSON's numbers include its integers
        names_.discard("integer")
    expected = " or ".join(_A_TYPE[name] for name in sorted(names_))

    def check(value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            raise ValueError(f"must be {expected}, got {json_type(value)}")
        return value

    return BeforeValidator(check)


def _headers_before(value: Any) -> Any:
    """Accept ``{"name": "text"}`` as well as ``[{"name", "value" | "value_base64"}]``."""
    if isinstance(value, dict):
        return [{"name": k, "value": v} for k, v in value.items()]
    if value is not None and not isinstance(value, list):
        raise ValueError(
            'must be an object of names to text values, or an array of {"name", "value" | '
            f'"value_base64"}} objects, got {json_type(value)}'
        )
    return value


_HEADERS_SCHEMA: dict[str, Any] = {
    "description": "Headers of the forwarded record: an object of text values, or a list of "
    '{"name", "value" | "value_base64"} (names may repeat; binary values in base64). '
    "Names starting with 'delayq-' are reserved.",
    "anyOf": [
        {"type": "object", "additionalProperties": {"type": "string"}},
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "value": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                    "value_base64": {"type": "string"},
                },
                "required": ["name"],
                "additionalProperties": False,
            },
        },
        {"type": "null"},
    ],
}


# --- POST /jobs ---------------------------------------------------------------------------------


class HeaderIn(BaseModel):
    """One header of the forwarded record."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    value: Annotated[str | None, _only_types(str)] = None
    value_base64: Annotated[str | None, _only_types(str)] = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        _utf8(value)
        if value.startswith(names.HEADER_PREFIX):
            raise ValueError(f"the {names.HEADER_PREFIX!r} prefix is reserved for delayq")
        return value

    @field_validator("value")
    @classmethod
    def _value(cls, value: str | None) -> str | None:
        if value is not None:
            _utf8(value)
        return value

    @field_validator("value_base64")
    @classmethod
    def _value_base64(cls, value: str | None) -> str | None:
        if value is not None:
            _b64(value)
        return value

    def header(self) -> Header:
        if self.value_base64 is not None:
            return (self.name, _b64(self.value_base64))
        return (self.name, None if self.value is None else _utf8(self.value))


@dataclass(frozen=True, slots=True)
class Schedule:
    """A checked schedule request: exactly what goes into the ingest record."""

    job_id: str
    target: str
    due_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[Header]
    #: A recurring job's rule (``due_ms``: its first occurrence); None for a one-shot job.
    rule: Rule | None = None

    @property
    def job_id_bytes(self) -> bytes:
        return self.job_id.encode()

    def ingest_headers(self) -> list[Header]:
        """The producer's headers plus the contract's (absolute due time: exact ``due_ms``)."""
        out: list[Header] = [
            *self.headers,
            (names.HEADER_TARGET, self.target.encode()),
            (names.HEADER_DUE_MS, str(self.due_ms).encode()),
        ]
        if self.key is not None:
            out.append((names.HEADER_KEY, self.key))
        if self.rule is not None:
            out.extend(rule_headers(self.rule))
        return out

    def forward_size(self) -> int:
        """Bytes the worker will forward (the check of ``max_forward_bytes``)."""
        job = Job(self.job_id_bytes, self.due_ms, self.target, self.key, self.value, (), 0)
        return job.forward_size() + sum(len(n) + len(v or b"") for n, v in self.headers)


#: The rules of a recurring job in one place, for the fields' descriptions.
_DST_RULE = (
    "Daylight saving time: a local time that does not exist (clocks go forward) fires at the "
    "first minute after the gap; one that exists twice (clocks go back) fires once, at the "
    "first."
)
_FIRST = (
    "Exactly one of delay and at; a recurring job (cron or every) may give neither: its first "
    "occurrence is then the rule's first after now."
)


class ScheduleIn(BaseModel):
    """``POST /jobs``: forward ``value`` to ``target`` after ``delay`` or at ``at``; with
    ``cron`` or ``every``, again at every occurrence of the rule."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str | None, _only_types(str)] = Field(
        None,
        description="Job id (1-1024 UTF-8 bytes); a job with the same id is replaced. "
        "Default: a new random id.",
    )
    target: Annotated[str, _only_types(str)] = Field(
        description="Topic the record is forwarded to when due."
    )
    delay: Annotated[int | float | str | None, _only_types(int, float, str)] = Field(
        None,
        description="Milliseconds (number) or a duration like '90s', '30m', '1h30m', '2d', "
        f"counted from the worker's clock. {_FIRST}",
    )
    at: Annotated[int | str | None, _only_types(int, str)] = Field(
        None,
        description="Epoch milliseconds or ISO-8601 with a zone ('2030-05-01T12:00:00Z'). "
        f"{_FIRST}",
    )
    cron: Annotated[str | None, _only_types(str)] = Field(
        None,
        description="A recurring job: forwarded at every time this cron rule matches, in "
        "timezone, until cancelled or until. Five fields (minute hour day-of-month month "
        "day-of-week, like '0 9 * * 1-5') or @hourly, @daily, @weekly, @monthly, @yearly. "
        f"{_DST_RULE} Not with every.",
    )
    timezone: Annotated[str | None, _only_types(str)] = Field(
        None,
        description="The IANA time zone cron is read in, like 'Europe/Berlin' (default UTC). "
        "Only with cron.",
    )
    every: Annotated[int | float | str | None, _only_types(int, float, str)] = Field(
        None,
        description="A recurring job: forwarded at its first occurrence and every interval "
        "after it (first + k x every: a late forward does not shift the later ones), until "
        "cancelled or until. Milliseconds (number) or a duration like '30s', '1h'; at least "
        f"{MIN_EVERY_MS} ms. Not with cron.",
    )
    until: Annotated[int | str | None, _only_types(int, str)] = Field(
        None,
        description="A recurring job's end: no occurrence after this. Epoch milliseconds or "
        "ISO-8601 with a zone; not before the first occurrence. Only with cron or every.",
    )
    key: Annotated[str | None, _only_types(str)] = Field(
        None, description="Key of the forwarded record (default: the job id)."
    )
    key_base64: Annotated[str | None, _only_types(str)] = Field(
        None, description="Binary key, base64; instead of key."
    )
    value: Annotated[str | None, _only_types(str)] = Field(
        None,
        description="Value of the forwarded record (UTF-8). Neither value nor value_base64: "
        "a null value (a delayed tombstone).",
    )
    value_base64: Annotated[str | None, _only_types(str)] = Field(
        None, description="Binary value, base64; instead of value."
    )
    headers: Annotated[
        list[HeaderIn] | None, BeforeValidator(_headers_before), WithJsonSchema(_HEADERS_SCHEMA)
    ] = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        if value is not None:
            encoded = _utf8(value)
            if not encoded:
                raise ValueError("must not be empty")
            if len(encoded) > MAX_JOB_ID_BYTES:
                raise ValueError(f"longer than {MAX_JOB_ID_BYTES} bytes (UTF-8)")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if not valid_topic_name(value):
            raise ValueError(
                f"{echo(value)} is not a valid Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
            )
        return value

    @field_validator("delay")
    @classmethod
    def _delay(cls, value: int | float | str | None) -> int | None:
        return None if value is None else parse_duration_ms(value)

    @field_validator("at", "until")
    @classmethod
    def _at(cls, value: int | str | None) -> int | None:
        return None if value is None else parse_time_ms(value)

    @field_validator("every")
    @classmethod
    def _every(cls, value: int | float | str | None) -> int | None:
        return None if value is None else parse_duration_ms(value)

    @field_validator("key", "value", "cron", "timezone")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None:
            _utf8(value)
        return value

    @field_validator("key_base64", "value_base64")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            _b64(value)
        return value

    def resolve(
        self, now_ms: int, forbidden_targets: frozenset[str], max_forward_bytes: int
    ) -> Schedule:
        """The ingest record to write, or a 422 :class:`ApiError` listing every problem."""
        rule, problems = check_rule(self.cron, self._every_ms, self.timezone, self._until_ms)
        errors = [self._rule_error(problem) for problem in problems]
        errors += self._when_errors()
        if self.target in forbidden_targets:
            internal = f"{echo(self.target)} is an internal delayq topic"
            errors.append(FieldError(field="target", message=internal))
        for name in ("key", "value"):
            if getattr(self, name) is not None and getattr(self, f"{name}_base64") is not None:
                errors.append(
                    FieldError(field=name, message=f"give {name} or {name}_base64, not both")
                )
        for i, header in enumerate(self.headers or ()):
            if header.value is not None and header.value_base64 is not None:
                errors.append(
                    FieldError(field=f"headers.{i}", message="give value or value_base64, not both")
                )
        due_ms = self._first_due_ms(now_ms, rule)
        if due_ms > MAX_DUE_MS and self.delay is not None:  # at is checked by its validator
            errors.append(FieldError(field="delay", message="the due time is beyond year 9999"))
        elif rule is not None:
            problem = first_occurrence_problem(rule, due_ms)
            if problem is not None:
                errors.append(self._rule_error(problem))
        if errors:
            raise invalid_request(errors)
        schedule = Schedule(
            job_id=self.id if self.id is not None else uuid.uuid4().hex,
            target=self.target,
            due_ms=due_ms,
            key=_bytes_field(self.key, self.key_base64),
            value=_bytes_field(self.value, self.value_base64),
            headers=[h.header() for h in self.headers or ()],
            rule=rule,
        )
        size = schedule.forward_size()
        if size > max_forward_bytes:
            raise invalid_request(
                [
                    FieldError(
                        field="value",
                        message=f"the forwarded record would have {size} bytes, more than "
                        f"the worker's limit of {max_forward_bytes}",
                    )
                ]
            )
        return schedule

    def _when_errors(self) -> list[FieldError]:
        """Exactly one of delay and at, or neither for a recurring job."""
        if self.delay is not None and self.at is not None:
            message = "give exactly one of delay or at (both were given)"
        elif self.delay is None and self.at is None and self.cron is None and self.every is None:
            message = (
                "give exactly one of delay or at (neither was given), or a recurring rule: "
                "cron or every"
            )
        else:
            return []
        return [FieldError(field="delay", message=message)]

    # The validators turned these into milliseconds; the annotations are the JSON's types.
    @property
    def _every_ms(self) -> int | None:
        return None if self.every is None else int(self.every)

    @property
    def _until_ms(self) -> int | None:
        return None if self.until is None else int(self.until)

    def _first_due_ms(self, now_ms: int, rule: Rule | None) -> int:
        """The due time delay or at give, else the rule's first occurrence after now."""
        if self.delay is not None:
            return now_ms + int(self.delay)
        if self.at is not None or rule is None:
            return int(self.at or 0)
        return rule.first_after(now_ms)

    def _rule_error(self, problem: RuleProblem) -> FieldError:
        """A problem of a rule field, its input quoted in part when long (as pydantic's are)."""
        message = problem.message
        given = {"cron": self.cron, "timezone": self.timezone}.get(problem.field)
        if given is not None:
            message = _shorten_echo(_shorten_echo(message, given), given.strip())
        return FieldError(field=problem.field, message=message)


def _bytes_field(text: str | None, b64: str | None) -> bytes | None:
    if b64 is not None:
        return _b64(b64)
    return None if text is None else text.encode()


class ScheduledOut(BaseModel):
    """201: the ingest record is acknowledged by the broker; the job is durable."""

    id: str
    due_ms: int
    due_at: str
    partition: int


# --- GET /jobs/{id}, GET /jobs, DELETE /jobs/{id} ----------------------------------------------


class HeaderOut(BaseModel):
    name: str
    value: str | None
    value_base64: str | None = None


class RuleOut(BaseModel):
    """A recurring job's rule: a cron rule in a time zone, or a fixed interval
    (:func:`app.rule_fields.rule_json`)."""

    cron: str | None = Field(description="The cron rule as given; null for an interval.")
    timezone: str | None = Field(
        description="The IANA time zone the cron rule is read in; null for an interval."
    )
    every_ms: int | None = Field(description="The interval, milliseconds; null for a cron rule.")
    until_ms: int | None = Field(
        description="No occurrence after this (epoch ms); null: until cancelled."
    )
    description: str = Field(
        description="The rule in words: 'At 09:00 on Monday through Friday (Europe/Berlin)', "
        "'every 30 s'."
    )


class JobOut(BaseModel):
    """A pending job. Text fields are null with a ``*_base64`` twin when not UTF-8."""

    id: str | None
    id_base64: str | None = None
    target: str
    due_ms: int = Field(description="When it is due: a recurring job's next occurrence.")
    due_at: str
    key: str | None = Field(description="null (and no key_base64): the job id is the key.")
    key_base64: str | None = None
    value: str | None = Field(description="null (and no value_base64): a null value.")
    value_base64: str | None = None
    headers: list[HeaderOut]
    status: Literal["pending", "in_flight"] = Field(
        description="in_flight: forwarded, its removal (a recurring job: its move to the next "
        "occurrence) not yet applied."
    )
    partition: int
    rule: RuleOut | None = Field(
        None, description="A recurring job's rule; null for a one-shot job."
    )


def job_out(job: Job, status: JobStatus, partition: int) -> dict[str, Any]:
    """The JSON form of a pending job (see :class:`JobOut`)."""
    out: dict[str, Any] = {}
    _text_or_b64(job.job_id, "id", out)
    out["target"] = job.target
    out["due_ms"] = job.due_ms
    out["due_at"] = format_time_ms(job.due_ms)
    _text_or_b64(job.key, "key", out)
    _text_or_b64(job.value, "value", out)
    headers = []
    for name, value in job.headers:
        header: dict[str, Any] = {"name": name}
        _text_or_b64(value, "value", header)
        headers.append(header)
    out["headers"] = headers
    out["status"] = str(status)
    out["partition"] = partition
    out["rule"] = None if job.rule is None else rule_json(job.rule)
    return out


class ListQuery(BaseModel):
    """``GET /jobs`` query: pending jobs due before ``before``, earliest first."""

    before: str | None = Field(
        None, description="Only jobs due before this: epoch ms or ISO-8601 with a zone."
    )
    limit: int = Field(DEFAULT_LIST_LIMIT, ge=1, le=MAX_LIST_LIMIT)

    @field_validator("before")
    @classmethod
    def _before(cls, value: str | None) -> str | None:
        if value is not None:
            parse_time_ms(value)
        return value

    @property
    def before_ms(self) -> int | None:
        return None if self.before is None else parse_time_ms(self.before)


class JobListOut(BaseModel):
    """Pending jobs, earliest first, of ``active_partitions`` (all of them for a cluster list)."""

    jobs: list[JobOut]
    count: int
    limit: int
    before_ms: int | None
    active_partitions: list[int]


class CancelOutcomeOut(BaseModel):
    """200 of ``DELETE /jobs/{id}?wait=true``: what applying the cancel found.

    ``cancelled``: the job was pending and will not be forwarded. ``too_late``: it was already
    forwarded, or sent and awaiting the broker's acknowledgement (``forwarded_ms``). ``unknown``:
    no such job was pending (never scheduled, cancelled before, or forwarded too long ago for
    the worker to remember). A recurring job's series ends with ``cancelled`` and ``too_late``
    alike: ``too_late`` says its current occurrence was sent.
    """

    id: str
    status: Literal["cancelled", "too_late", "unknown"]
    due_ms: int | None = None
    due_at: str | None = None
    forwarded_ms: int | None = None
    forwarded_at: str | None = None


def cancel_outcome_out(job_id: str, outcome: CancelOutcome) -> dict[str, Any]:
    """The JSON body of a cancel outcome (:class:`CancelOutcomeOut`)."""
    body: dict[str, Any] = {"id": job_id, "status": outcome.outcome}
    if outcome.due_ms is not None:
        body |= {"due_ms": outcome.due_ms, "due_at": format_time_ms(outcome.due_ms)}
    if outcome.forwarded_ms is not None:
        body |= {
            "forwarded_ms": outcome.forwarded_ms,
            "forwarded_at": format_time_ms(outcome.forwarded_ms),
        }
    return body


class CancelOut(BaseModel):
    """202: the cancel record is acknowledged; the job is gone once the worker applies it."""

    id: str
    status: Literal["cancelling"]


# --- stats and health ---------------------------------------------------------------------------


class Counters(BaseModel):
    """Counts since the worker started."""

    scheduled: int
    replaced: int
    cancelled: int
    cancel_unknown: int
    fired: int
    removed: int
    forward_failures: int
    dead_lettered: int
    clock_skew_corrected: int
    replays_skipped: int
    gaps_read_back: int
    not_owned_skipped: int
    ingest_probes: int = Field(
        description="End-offset probes of the ingest guard (a job waits for the commands "
        "acknowledged before its due time)."
    )
    guard_read_back: int = Field(
        description="Ingest commands read back because the stream had not delivered them."
    )
    arrived_past_due: int = Field(
        description="Jobs whose due time had passed when delayq received them; their "
        "lateness counts from the receipt (the ingest record's timestamp)."
    )
    moved: int = Field(
        default=0,
        description="Commands a producer wrote off their job's home partition (murmur2 of the "
        "job id), moved there: one more hop each.",
    )
    moves_skipped: int = Field(
        default=0,
        description="Moved commands that reached their home again (sent again after a crash), "
        "not applied twice.",
    )
    rescheduled: int = Field(
        default=0,
        description="Recurring jobs written again at their next occurrence after a forward.",
    )
    occurrences_skipped: int = Field(
        default=0,
        description="Occurrences of recurring jobs missed (no worker ran, or it lagged) and "
        "not sent: only the latest one due is.",
    )


class Lateness(BaseModel):
    """Forward time minus due time over the most recent forwards (ms; null with no samples).

    For a job already past due when delayq received it, from the receipt instead: lateness is
    delayq's own delay, never the age of a job scheduled in the past.
    """

    samples: int
    p50: int | None
    p90: int | None
    p99: int | None
    max: int | None


class StatsOut(BaseModel):
    worker: str
    active_partitions: list[int]
    pending: int
    oldest_overdue_ms: int = Field(
        description="Age of the oldest due job not yet forwarded (0: none overdue)."
    )
    guard_lag_ms: int = Field(
        description="How long the earliest due job held back by the ingest guard has waited "
        "for the commands acknowledged before its due time to be applied (0: none held)."
    )
    counters: Counters
    lateness_ms: Lateness
    move_lag_ms: Lateness | None = Field(
        default=None,
        description="Moved commands applied by this worker: application time minus the "
        "record's timestamp, over the most recent ones (the extra hop of a producer that does "
        "not partition by murmur2).",
    )


class TotalStats(BaseModel):
    pending: int
    oldest_overdue_ms: int
    guard_lag_ms: int
    counters: Counters
    lateness_max_ms: int | None = Field(
        description="The largest lateness seen by any worker (quantiles do not add up)."
    )


class ClusterStatsOut(BaseModel):
    workers: list[StatsOut]
    total: TotalStats


class HealthOut(BaseModel):
    status: Literal["ok", "recovering"]
    active_partitions: list[int]
    standby_partitions: list[int]
    next_wake_ms: int | None
    pid: int = Field(description="The worker's process id (on its host).")
    standby_lag: dict[str, int] | None = Field(
        None,
        description="Per standby partition: changelog records its standby copy has not read "
        "yet (0: a fail-over has nothing to replay); null if the broker did not answer. Only "
        "when ready.",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What is degraded without making the worker unready (the status stays "
        "200): partitions with fewer standby copies than DELAYQ_STANDBY_REPLICAS, whose "
        "fail-over restores them from the changelog. Empty when not ready.",
    )


# --- go-delayqueue compatibility ----------------------------------------------------------------


class CompatAddIn(BaseModel):
    """go-delayqueue's ``/delay-queue/api/jobs/add`` body (unknown fields ignored, as Go does)."""

    topic: Annotated[str, _only_types(str)] = Field(min_length=1)
    id: Annotated[str | None, _only_types(str)] = None
    delay: Annotated[int, _only_types(int)] = Field(description="Seconds, 1 to 2^31.")
    body: Annotated[str, _only_types(str)] = ""

    @field_validator("id", "body")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None:
            _utf8(value)
        return value


class CompatJobIdIn(BaseModel):
    """go-delayqueue's remove/get body."""

    job_id: Annotated[str, _only_types(str)] = Field(min_length=1)

    @field_validator("job_id")
    @classmethod
    def _text(cls, value: str) -> str:
        _utf8(value)
        return value


class CompatJobOut(BaseModel):
    topic: str
    id: str
    exec_time: int = Field(description="Due time, epoch seconds.")
    delay: int = Field(description="Seconds left until the due time (rounded up).")
    body: str


class CompatReply(BaseModel):
    """go-delayqueue's envelope: code 0 on success."""

    code: int
    message: str
    data: dict[str, Any] | None


#: The go-delayqueue endpoints are under it; the web server's errors there take its envelope.
COMPAT_PREFIX = "/delay-queue/"


def compat_http_error(status: int, message: str) -> Reply:
    """An HTTP error (401, 404, 405, 413) in go-delayqueue's envelope, the status as its code."""
    return Reply(status, {"code": status, "message": message, "data": None})
