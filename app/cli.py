"""The ``delayq`` command line: schedule and cancel jobs from a shell (``delayq --help``).

    delayq schedule --target reminders --delay 30m --key user-7 'time to stretch'
    echo '{"report": 42}' | delayq schedule -t reports --at 2030-05-01T12:00:00Z --json -
    delayq schedule -t chat --cron '0 9 * * 1-5' --timezone Europe/Berlin --id standup 'standup!'
    delayq schedule -t pings --every 30s --until 2030-01-01T00:00:00Z ping
    delayq cancel 3f2a9c...
    delayq get 3f2a9c...            # these three ask a worker's HTTP API (--url)
    delayq list --before 2030-05-01T00:00:00Z --limit 20
    delayq stats --cluster
    delayq tail reminders           # print the records of a topic as they arrive

Output is one sentence per command (a line per job for ``get`` and ``list``, a table for
``stats``), or one JSON object with ``--json``. Errors are one line on stderr,
``delayq: error: ...``, with the exit code saying what kind: :data:`EXIT_USAGE` for bad input or
settings (and any 4xx answer of the API), :data:`EXIT_UNAVAILABLE` when the broker or the worker
cannot be reached (or the API answers 503), :data:`EXIT_FAILURE` for anything else refused, and
for ``get`` of a job that is not pending.

Commands writing to the ingest topic take :func:`kafka_options` (``tail``: only
:func:`bootstrap_option`), those asking the HTTP API
:func:`api_options`; every command takes :func:`json_option` and prints with :func:`emit`, and
reports failures by raising :class:`CommandError` (or a click ``UsageError``): a new command only
has to follow that.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import itertools
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, TypeVar

import click
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from app import names, tansu_compat
from app.client import (
    DEFAULT_REQUEST_TIMEOUT_S,
    DelayQueue,
    ScheduledJob,
    checked_topic,
    partition_counts,
)
from app.durations import format_duration_ms, format_time_ms, parse_duration_ms, parse_time_ms
from app.endpoints import DEFAULT_WEB_PORT, bootstrap_list, default_bootstrap, default_web_url
from app.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    BrokerUnavailable,
    CommandError,
    DelayqError,
    IngestTopicError,
    SettingsError,
)
from app.ranges import ranges_text
from app.recurrence import Rule
from app.rule_fields import check_rule, rule_json
from app.times import now_ms

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "api_options",
    "bootstrap_option",
    "cli",
    "emit",
    "json_option",
    "kafka_options",
    "main",
]

_F = TypeVar("_F", bound=Callable[..., Any])
_QUIET = logging.NullHandler()

#: Client arguments as the options that set them, for error messages.
_OPTION_OF = {
    "target": "--target",
    "job_id": "--id",
    "key": "--key",
    "value": "VALUE",
    "headers": "--header",
    "ingest_topic": "--ingest-topic",
    "bootstrap_servers": "--bootstrap",
    "app_id": "--app-id",
    "delay": "--delay",
    "at": "--at",
    "cron": "--cron",
    "timezone": "--timezone",
    "every": "--every",
    "until": "--until",
}


def _one_line(message: str) -> str:
    return "; ".join(line.strip() for line in message.strip().splitlines() if line.strip())


def _fail(message: str, exit_code: int) -> int:
    click.echo(f"delayq: error: {_one_line(message)}", err=True)
    return exit_code


class DelayqGroup(click.Group):
    """A click group whose every error is one line on stderr with one of delayq's exit codes."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else EXIT_OK
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            code = _fail(exc.format_message() + hint, EXIT_USAGE)
        except click.ClickException as exc:
            code = _fail(exc.format_message(), exc.exit_code)
        except CommandError as exc:
            code = _fail(exc.message, exc.exit_code)
        except click.Abort:
            code = _fail("interrupted", EXIT_INTERRUPTED)
        if standalone_mode:
            sys.exit(code)
        return code


@contextlib.contextmanager
def _client_errors(**renamed: str) -> Iterator[None]:
    """The client's exceptions as :class:`CommandError` with the matching exit code.

    ``renamed`` maps client arguments to this command's parameters, for the messages.
    """
    try:
        yield
    except CommandError:  # already one (it is a DelayqError too): keep its exit code
        raise
    except SettingsError as exc:
        raise CommandError(f"invalid settings: {exc}", EXIT_USAGE) from exc
    except BrokerUnavailable as exc:
        raise CommandError(str(exc), EXIT_UNAVAILABLE) from exc
    except IngestTopicError as exc:  # a mistyped --ingest-topic, or settings of another cluster
        raise CommandError(str(exc), EXIT_USAGE) from exc
    except DelayqError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from exc
    except ValueError as exc:  # the client validates its arguments with ValueError
        argument, sep, reason = str(exc).partition(": ")
        option = renamed.get(argument) or _OPTION_OF.get(argument)
        message = f"{option}: {reason}" if sep and option else str(exc)
        raise CommandError(message, EXIT_USAGE) from exc


def emit(as_json: bool, data: Mapping[str, Any], sentence: str) -> None:
    """Print the result of a command: ``data`` as JSON with ``--json``, else ``sentence``."""
    click.echo(json.dumps(data, sort_keys=True) if as_json else sentence)


def json_option(func: _F) -> _F:
    """``--json``: print one JSON object instead of text."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON object instead of text."
    )(func)


def bootstrap_option(func: _F) -> _F:
    """``--bootstrap``, for commands that talk to Kafka."""
    return click.option(
        "--bootstrap",
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers [default: $DELAYQ_BROKER_URL, else "
        "127.0.0.1:$DELAYQ_EMBEDDED_PORT, else 127.0.0.1:9092].",
    )(func)


def _timeout_option(default: float, help_text: str) -> Callable[[_F], _F]:
    """``--timeout SECONDS`` (positive) with ``default``."""
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=default,
        show_default=True,
        metavar="SECONDS",
        help=help_text,
    )


def kafka_options(func: _F) -> _F:
    """``--bootstrap``, ``--ingest-topic``, ``--app-id`` and ``--timeout``, for commands that
    write to the ingest topic."""
    func = _timeout_option(DEFAULT_REQUEST_TIMEOUT_S, "How long to wait for the broker.")(func)
    func = click.option(
        "--app-id",
        metavar="ID",
        help="The workers' app id: the ingest topic must have the partitions of their jobs "
        "changelog topic [default: $DELAYQ_APP_ID or delayq].",
    )(func)
    func = click.option(
        "--ingest-topic",
        metavar="TOPIC",
        help="delayq's ingest topic [default: $DELAYQ_INGEST_TOPIC or delayq-ingest].",
    )(func)
    return bootstrap_option(func)


def _security_options() -> dict[str, Any]:
    """aiokafka's security arguments from ``DELAYQ_SECURITY_*``/``SASL_*``/``SSL_*``, if set."""
    if any(
        name.startswith(("DELAYQ_SECURITY", "DELAYQ_SASL", "DELAYQ_SSL")) for name in os.environ
    ):
        from app.settings import load_settings  # only then: it needs pydantic

        return load_settings().kafka_client_options()
    return {}


def _queue(
    bootstrap: str | None, ingest_topic: str | None, app_id: str | None, timeout: float
) -> DelayQueue:
    return DelayQueue(
        bootstrap,
        ingest_topic,
        request_timeout=timeout,
        producer_options=_security_options(),
        app_id=app_id,
    )


# --- parameter types ----------------------------------------------------------------------------


class _Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_duration_ms(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Time(click.ParamType):
    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_time_ms(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _arg_bytes(text: str) -> bytes:
    """A command-line argument as the bytes that were typed (undecodable bytes survive)."""
    return os.fsencode(text)


def _headers(
    ctx: click.Context, param: click.Parameter, values: Sequence[str]
) -> list[tuple[str, bytes]]:
    headers: list[tuple[str, bytes]] = []
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", ctx, param)
        headers.append((name, _arg_bytes(value)))
    return headers


# --- commands -----------------------------------------------------------------------------------


@click.group(
    cls=DelayqGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("-v", "--verbose", is_flag=True, help="Show the Kafka client's log on stderr.")
@click.version_option(package_name="delayq", prog_name="delayq")
def cli(verbose: bool) -> None:
    """Schedule and cancel delayed Kafka records through delayq; look at pending jobs and stats.

    schedule and cancel write to Kafka, tail reads a topic (--bootstrap); get, list and stats
    ask a worker's HTTP API (--url).

    Exit codes: 0 done, 1 refused or not pending, 2 bad input, 3 broker or worker unreachable.
    """
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    elif _QUIET not in logging.getLogger("aiokafka").handlers:
        # Without a handler Python would print aiokafka's warnings: errors stay one line.
        logging.getLogger("aiokafka").addHandler(_QUIET)


def _read_value(value: str | None, file: IO[bytes] | None, tombstone: bool) -> bytes | None:
    given = sum((value is not None, file is not None, tombstone))
    if given != 1:
        raise click.UsageError(
            "give the value as an argument, with --file PATH or as '-' (stdin), or --tombstone"
            + (" (only one of them)" if given else "")
        )
    if file is not None:
        return file.read()
    if value == "-":
        return click.get_binary_stream("stdin").read()
    return None if value is None else _arg_bytes(value)


def _due_sentence(job: ScheduledJob, target: str, rule: Rule | None) -> str:
    remaining = job.due_ms - now_ms()
    when = f"in {format_duration_ms(remaining)}" if remaining > 0 else "due now"
    due = f"{format_time_ms(job.due_ms)} ({when})"
    if rule is None:
        return f"scheduled job {job.job_id} for {due} to {target}"
    return f"scheduled job {job.job_id} {_repeats(rule_json(rule))} to {target}, first {due}"


def _repeats(rule: Mapping[str, Any]) -> str:
    """A recurring job's rule for a sentence: ``repeats at 09:00 on Monday (Europe/Berlin)``."""
    text = str(rule.get("description"))
    return f"repeats {text[:1].lower()}{text[1:]}"


def _checked_rule(
    delay: int | None,
    at: int | None,
    cron: str | None,
    timezone: str | None,
    every: int | None,
    until: int | None,
) -> Rule | None:
    """The recurring rule the options give (None: a one-shot job), or every problem in one
    line (the client checks them too, but names its arguments, not the options)."""
    rule, problems = check_rule(cron, every, timezone, until, _OPTION_OF)
    if problems:
        message = "; ".join(f"{_OPTION_OF[p.field]}: {p.message}" for p in problems)
        raise CommandError(message, EXIT_USAGE)
    if delay is not None and at is not None:
        raise click.UsageError("give exactly one of --delay or --at")
    if rule is None and delay is None and at is None:
        raise click.UsageError(
            "give exactly one of --delay or --at, or --cron or --every for a recurring job"
        )
    return rule


@cli.command()
@click.argument("value", required=False)
@click.option("-t", "--target", required=True, metavar="TOPIC", help="Forward to this topic.")
@click.option(
    "-d", "--delay", type=_Duration(), help="Forward after this long: 90s, 30m, 1h30m, 2d, 500ms."
)
@click.option(
    "-a",
    "--at",
    type=_Time(),
    help="Forward at this time: ISO-8601 with a zone (2030-05-01T12:00:00Z) or epoch ms.",
)
@click.option(
    "--cron",
    metavar="RULE",
    help="Forward again at every time this cron rule matches: five fields ('0 9 * * 1-5') or "
    "@hourly, @daily, @weekly, @monthly, @yearly. A local time that does not exist fires at "
    "the first minute after the gap; one that exists twice fires once.",
)
@click.option(
    "--timezone",
    metavar="ZONE",
    help="The IANA time zone of --cron (Europe/Berlin) [default: UTC].",
)
@click.option(
    "--every", type=_Duration(), help="Forward again at this interval, at least 1s: 30s, 5m, 1h."
)
@click.option(
    "--until",
    type=_Time(),
    help="With --cron or --every: no occurrence after this time (ISO-8601 with a zone, epoch ms).",
)
@click.option("-k", "--key", help="Key of the forwarded record [default: the job id].")
@click.option(
    "--id", "job_id", metavar="ID", help="Job id [default: random]; an existing id is replaced."
)
@click.option(
    "-f", "--file", type=click.File("rb"), help="Read the value from this file ('-': stdin)."
)
@click.option("--tombstone", is_flag=True, help="Forward a null value (a delete when compacted).")
@click.option(
    "-H",
    "--header",
    "headers",
    multiple=True,
    metavar="NAME=VALUE",
    callback=_headers,
    help="A header of the forwarded record (repeatable).",
)
@kafka_options
@json_option
def schedule(
    value: str | None,
    target: str,
    delay: int | None,
    at: int | None,
    cron: str | None,
    timezone: str | None,
    every: int | None,
    until: int | None,
    key: str | None,
    job_id: str | None,
    file: IO[bytes] | None,
    tombstone: bool,
    headers: list[tuple[str, bytes]],
    bootstrap: str | None,
    ingest_topic: str | None,
    app_id: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Forward VALUE to a topic after --delay or at --at; with --cron or --every, again at
    every occurrence until cancelled or --until (--delay or --at then set the first one, by
    default the rule's first after now).

    VALUE is the record's value as typed; '-' reads it from stdin, --file from a file.
    """
    rule = _checked_rule(delay, at, cron, timezone, every, until)
    record = _read_value(value, file, tombstone)
    with _client_errors():
        queue = _queue(bootstrap, ingest_topic, app_id, timeout)
        try:
            job = queue.schedule(
                record,
                target=target,
                delay=delay,
                at=at,
                key=None if key is None else _arg_bytes(key),
                job_id=job_id,
                headers=headers,
                cron=cron,
                timezone=timezone,
                every=every,
                until=until,
            )
        finally:
            queue.close()
    data = {
        "job_id": job.job_id,
        "due_ms": job.due_ms,
        "due_at": format_time_ms(job.due_ms),
        "target": target,
        "rule": None if rule is None else rule_json(rule),
    }
    emit(as_json, data, _due_sentence(job, target, rule))


@cli.command()
@click.argument("job_id", metavar="ID")
@kafka_options
@click.option(
    "--wait",
    is_flag=True,
    help="Cancel through a worker's HTTP API (--url) and wait for the job's owner to apply "
    "the cancel: says whether it won (exit 0), came too late (exit 1: forwarded, with when) "
    "or found no such job (exit 1).",
)
@click.option(
    "--url",
    metavar="URL",
    help="With --wait: any worker's HTTP API [default: http://127.0.0.1:$DELAYQ_WEB_PORT, "
    f"or port {DEFAULT_WEB_PORT}].",
)
@json_option
def cancel(
    job_id: str,
    bootstrap: str | None,
    ingest_topic: str | None,
    app_id: str | None,
    timeout: float,
    wait: bool,
    url: str | None,
    as_json: bool,
) -> None:
    """Cancel the pending job ID (a job that is not pending is left alone)."""
    if wait:
        _cancel_and_wait(job_id, url, timeout, as_json)
        return
    with _client_errors(job_id="ID"):
        queue = _queue(bootstrap, ingest_topic, app_id, timeout)
        try:
            queue.cancel(job_id)
        finally:
            queue.close()
    emit(as_json, {"job_id": job_id, "cancel_sent": True}, f"cancel of job {job_id} sent")


def _cancel_and_wait(job_id: str, url: str | None, timeout: float, as_json: bool) -> None:
    """``cancel --wait``: ``DELETE /jobs/{id}?wait=true`` on a worker; exit 1 unless it won."""
    # The worker waits up to 10 s for the owner to apply the cancel: room for that.
    api = _Api(url, max(timeout, 15.0))
    path = f"/jobs/{urllib.parse.quote(job_id, safe='')}?wait=true"
    data, status = api.call("DELETE", path)
    outcome = data.get("status")
    due = f" (due {format_time_ms(data['due_ms'])})" if data.get("due_ms") is not None else ""
    if status == 202:
        sentence = f"cancel of job {job_id} sent; its owner has not applied it yet"
        emit(as_json, data, sentence)
        raise SystemExit(EXIT_UNAVAILABLE)
    if outcome == "cancelled":
        emit(as_json, data, f"job {job_id} cancelled{due}")
        return
    if outcome == "too_late":
        sentence = f"too late: job {job_id} was forwarded at {data['forwarded_at']}{due}"
    else:
        sentence = f"job {job_id} is not pending (never scheduled, cancelled or long forwarded)"
    emit(as_json, data, sentence)
    raise SystemExit(EXIT_FAILURE)


# --- commands asking a worker's HTTP API ----------------------------------------------------------

#: How long the HTTP commands wait for a worker's answer by default.
DEFAULT_HTTP_TIMEOUT_S = 10.0
#: Longest text of a value, key or header shown in a job's line (``--json`` shows all of it).
_SHOWN_CHARS = 40
_SHOWN_HEADERS = 3


def _default_url() -> str:
    try:
        return default_web_url()
    except SettingsError as exc:
        raise CommandError(f"invalid settings: {exc}", EXIT_USAGE) from exc


def _base_url(url: str | None) -> str:
    """``--url`` (default from ``DELAYQ_WEB_PORT``) checked, without a trailing slash."""
    if url is None:
        return _default_url()
    base = url.strip()
    if "://" not in base:
        base = f"http://{base}"  # 127.0.0.1:6066
    try:
        parts = urllib.parse.urlsplit(base)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if not (port_ok and parts.scheme in ("http", "https") and parts.hostname):
        raise CommandError(f"--url: expected http://HOST:PORT, got {url!r}", EXIT_USAGE)
    if parts.query or parts.fragment:
        raise CommandError(f"--url: no query or fragment please, got {url!r}", EXIT_USAGE)
    return base.rstrip("/")


def api_options(func: _F) -> _F:
    """``--url`` and ``--timeout``, for commands that ask a worker's HTTP API."""
    timeout = _timeout_option(DEFAULT_HTTP_TIMEOUT_S, "How long to wait for the worker's answer.")
    func = timeout(func)
    return click.option(
        "--url",
        metavar="URL",
        help="Any worker's HTTP API; it asks the others [default: "
        f"http://127.0.0.1:$DELAYQ_WEB_PORT, or port {DEFAULT_WEB_PORT}].",
    )(func)


class _Api:
    """GET requests to one worker's HTTP API; every failure is a :class:`CommandError`."""

    def __init__(self, url: str | None, timeout: float) -> None:
        self.url = _base_url(url)
        self.timeout = timeout

    def get(self, path: str, not_found: str | None = None) -> Any:
        """The JSON answer to ``GET path``; ``not_found``: the message (exit 1) of a 404."""
        data, _status = self.call("GET", path, not_found)
        return data

    def call(self, method: str, path: str, not_found: str | None = None) -> tuple[Any, int]:
        """The JSON answer to ``method path`` (a 2xx) and its status; else a CommandError."""
        request = urllib.request.Request(
            self.url + path,
            method=method,
            headers={"Accept": "application/json", "User-Agent": "delayq-cli"},
        )
        try:
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    status, body = response.status, response.read()
                    retry_after = None
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read()
                retry_after = exc.headers.get("Retry-After")
        except (OSError, http.client.HTTPException) as exc:
            raise CommandError(
                f"cannot reach delayq at {self.url} ({_why(exc, self.timeout)})", EXIT_UNAVAILABLE
            ) from exc
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if 200 <= status < 300 and data is not None:
            return data, status
        raise self._error(status, data, retry_after, not_found)

    def _error(
        self, status: int, data: Any, retry_after: str | None, not_found: str | None
    ) -> CommandError:
        message = data.get("message") if isinstance(data, dict) else None
        if not isinstance(message, str):  # not delayq's error envelope
            why = "not JSON" if data is None else "unexpected JSON"
            return CommandError(
                f"HTTP {status} from {self.url} ({why}): is it a delayq worker's API?",
                EXIT_USAGE if 400 <= status < 500 else EXIT_FAILURE,
            )
        if status == 404 and not_found is not None:
            return CommandError(not_found, EXIT_FAILURE)
        if status == 503:
            later = f", retry after {retry_after}s" if retry_after else ""
            return CommandError(f"{message} (HTTP 503{later})", EXIT_UNAVAILABLE)
        if 400 <= status < 500:
            return CommandError(f"{message} (HTTP {status})", EXIT_USAGE)
        return CommandError(f"{message} (HTTP {status})", EXIT_FAILURE)


def _why(exc: BaseException, timeout: float) -> str:
    """Why a request got no answer, in a few words."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused: is a worker running there?"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _ago_or_in(due_ms: int, now: int) -> str:
    """``in 59m58s`` / ``3s overdue``, to the second (to the millisecond under one second)."""
    left = due_ms - now
    rough = abs(left) if abs(left) < 1_000 else round(abs(left) / 1_000) * 1_000
    if left > 0:
        return f"in {format_duration_ms(rough)}"
    return "due now" if rough == 0 else f"{format_duration_ms(rough)} overdue"


def _shown(item: Mapping[str, Any], name: str) -> str | None:
    """``item[name]`` (a text or a ``name_base64`` twin) for one line; None when null."""
    text = item.get(name)
    if isinstance(text, str):
        if len(text) > _SHOWN_CHARS:
            return f"{text[:_SHOWN_CHARS]!r}... ({len(text.encode())} bytes)"
        return repr(text)
    b64 = item.get(f"{name}_base64")
    if isinstance(b64, str):
        return f"<{len(base64.b64decode(b64))} bytes, not UTF-8>"
    return None


def _job_cells(job: Mapping[str, Any], now: int) -> list[str]:
    job_id = job.get("id")
    if not isinstance(job_id, str):
        job_id = f"base64:{job.get('id_base64')}"
    key = _shown(job, "key")
    value = _shown(job, "value")
    rule = job.get("rule")
    details = [
        _repeats(rule) if isinstance(rule, Mapping) else "",
        f"key {key}" if key is not None else "",
        f"value {value or 'null'}",
    ]
    headers = job.get("headers") or []
    if headers:
        shown = [f"{h.get('name')}={_shown(h, 'value') or 'null'}" for h in headers]
        more = len(shown) - _SHOWN_HEADERS
        extra = [f"+{more} more"] if more > 0 else []
        details.append("headers " + ", ".join(shown[:_SHOWN_HEADERS] + extra))
    return [
        job_id,
        str(job.get("status")),
        f"due {job.get('due_at')}",
        _ago_or_in(int(job["due_ms"]), now),
        f"to {job.get('target')}",
        f"partition {job.get('partition')}",
        "  ".join(d for d in details if d),
    ]


def _table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` as lines of left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows)))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
        for row in rows
    )


def _ranges(partitions: Sequence[int]) -> str:
    """``[0, 1, 2, 3, 6]`` as ``0-3, 6``."""
    return ranges_text(partitions) or "none"


def _ms(value: Any) -> str:
    return "-" if value is None else format_duration_ms(int(value))


def _stats_rows(stats: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One worker's stats (``StatsOut``) as ``(label, value)`` rows."""
    rows = [
        ("active partitions", _ranges(stats.get("active_partitions", []))),
        ("pending", str(stats.get("pending"))),
        ("oldest overdue", _ms(stats.get("oldest_overdue_ms"))),
        ("ingest guard lag", _ms(stats.get("guard_lag_ms"))),
    ]
    rows += [(name.replace("_", " "), str(n)) for name, n in stats.get("counters", {}).items()]
    lateness = stats.get("lateness_ms", {})
    rows.append(("lateness samples", str(lateness.get("samples"))))
    rows += [(f"lateness {q}", _ms(lateness.get(q))) for q in ("p50", "p90", "p99", "max")]
    move_lag = stats.get("move_lag_ms") or {}
    rows += [(f"move lag {q}", _ms(move_lag.get(q))) for q in ("p99", "max")]
    return rows


def _stats_table(data: Mapping[str, Any]) -> str:
    """``GET /stats`` (one worker) or ``GET /stats?cluster=1`` (a column per worker, and total)."""
    if "workers" not in data:
        return _table([("worker", str(data.get("worker"))), *_stats_rows(data)])
    workers: list[Mapping[str, Any]] = data["workers"]
    columns = [dict(_stats_rows(worker)) for worker in workers]
    total = data.get("total", {})
    summed = {
        "active partitions": _ranges([p for w in workers for p in w["active_partitions"]]),
        "pending": str(total.get("pending")),
        "oldest overdue": _ms(total.get("oldest_overdue_ms")),
        "ingest guard lag": _ms(total.get("guard_lag_ms")),
        "lateness max": _ms(total.get("lateness_max_ms")),
    }
    summed |= {name.replace("_", " "): str(n) for name, n in total.get("counters", {}).items()}
    labels = [label for label, _ in _stats_rows(workers[0])] if workers else list(summed)
    rows = [["worker", *(str(w.get("worker")) for w in workers), "total"]]
    for label in labels:
        rows.append([label, *(column.get(label, "") for column in columns), summed.get(label, "")])
    return _table(rows)


@cli.command("get")
@click.argument("job_id", metavar="ID")
@api_options
@json_option
def get_job(job_id: str, url: str | None, timeout: float, as_json: bool) -> None:
    """Show the pending job ID (exit 1 if there is none)."""
    if not job_id:
        raise click.BadParameter("must not be empty", param_hint="'ID'")
    api = _Api(url, timeout)
    job = api.get(
        "/jobs/" + urllib.parse.quote(job_id, safe=""),
        not_found=f"job {job_id} is not pending (never scheduled, already forwarded or cancelled)",
    )
    emit(as_json, job, _table([_job_cells(job, now_ms())]))


@cli.command("list")
@click.option(
    "-b",
    "--before",
    type=_Time(),
    metavar="TIME",
    help="Only jobs due before this: ISO-8601 with a zone, or epoch ms.",
)
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    metavar="N",
    help="At most this many jobs (the API allows up to 1000).",
)
@api_options
@json_option
def list_jobs(
    before: int | None, limit: int, url: str | None, timeout: float, as_json: bool
) -> None:
    """List the earliest pending jobs of the whole cluster, one line each."""
    query = {"limit": str(limit)} | ({} if before is None else {"before": str(before)})
    api = _Api(url, timeout)
    data = api.get("/jobs?" + urllib.parse.urlencode(query))
    jobs = data.get("jobs", [])
    if as_json or jobs:
        now = now_ms()
        emit(as_json, data, _table([_job_cells(job, now) for job in jobs]))
    else:
        due = "" if before is None else f" due before {format_time_ms(before)}"
        click.echo(f"no pending jobs{due}")


@cli.command()
@click.option("-c", "--cluster", is_flag=True, help="Every worker's stats, and their total.")
@api_options
@json_option
def stats(cluster: bool, url: str | None, timeout: float, as_json: bool) -> None:
    """Show a worker's counters, pending jobs and lateness (--cluster: every worker's)."""
    api = _Api(url, timeout)
    data = api.get("/stats?cluster=1" if cluster else "/stats")
    emit(as_json, data, _stats_table(data))


# --- following a topic ----------------------------------------------------------------------------

#: Longest value shown in ``tail``'s line (keys and header values: ``_SHOWN_CHARS``).
_TAIL_VALUE_CHARS = 120
#: Headers shown in ``tail``'s line (``--json`` has them all).
_TAIL_HEADERS = 8
#: How long one wait for records may last: Ctrl-C, --timeout and --max are seen this often.
_TAIL_POLL_S = 1.0
#: How often a tail looks again for a topic that does not exist yet.
_TOPIC_POLL_S = 0.5


def _text_or_base64(name: str, data: bytes | None) -> dict[str, Any]:
    """``{name: text}``, ``{name: None, name_base64: ...}`` when not UTF-8, as the HTTP API."""
    if data is None:
        return {name: None}
    try:
        return {name: data.decode()}
    except UnicodeDecodeError:
        return {name: None, f"{name}_base64": base64.b64encode(data).decode()}


def _shown_bytes(data: bytes | None, limit: int = _SHOWN_CHARS) -> str:
    """``data`` for one line: the repr of its text (of its bytes if not UTF-8), cut at ``limit``."""
    if data is None:
        return "null"
    try:
        shown: str | bytes = data.decode()
    except UnicodeDecodeError:
        shown = data
    if len(shown) > limit:
        return f"{shown[:limit]!r}... ({len(data)} bytes)"
    return repr(shown)


def _lateness_ms(record: ConsumerRecord[bytes, bytes]) -> int | None:
    """A delayq forward's record time minus its ``delayq-due-ms``; None for other records."""
    for name, value in record.headers:
        if name == names.HEADER_DUE_MS:
            with contextlib.suppress(ValueError):
                return int(record.timestamp) - int(value)
    return None


def _record_data(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    """One record as ``tail --json`` prints it."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp,
        "timestamp": format_time_ms(record.timestamp),
        **_text_or_base64("key", record.key),
        **_text_or_base64("value", record.value),
        "headers": [{"name": name, **_text_or_base64("value", v)} for name, v in record.headers],
        "lateness_ms": _lateness_ms(record),
    }


def _record_line(record: ConsumerRecord[bytes, bytes]) -> str:
    """One record as ``tail`` prints it: where, when, key, value, headers, lateness."""
    cells = [
        f"{record.partition}@{record.offset}",
        format_time_ms(record.timestamp),
        f"key {_shown_bytes(record.key)}",
        f"value {_shown_bytes(record.value, _TAIL_VALUE_CHARS)}",
    ]
    if record.headers:
        shown = [f"{name}={_shown_bytes(value)}" for name, value in record.headers]
        more = len(shown) - _TAIL_HEADERS
        cells.append(
            "headers " + ", ".join(shown[:_TAIL_HEADERS] + ([f"+{more} more"] * (more > 0)))
        )
    lateness = _lateness_ms(record)
    if lateness is not None:
        early = f"{format_duration_ms(-lateness)} early" if lateness < 0 else ""
        cells.append(f"lateness {early or format_duration_ms(lateness)}")
    return "  ".join(cells)


@contextlib.contextmanager
def _reaching(servers: str) -> Iterator[None]:
    """Connection failures and silence of the broker as a :class:`CommandError` (exit 3)."""
    try:
        yield
    except TimeoutError as exc:
        why = f"no answer within {DEFAULT_REQUEST_TIMEOUT_S:g}s"
        raise CommandError(
            f"cannot reach the Kafka broker at {servers} ({why})", EXIT_UNAVAILABLE
        ) from exc
    except KafkaError as exc:
        if not exc.retriable:  # an answer: no access to the topic, ...
            raise CommandError(f"the Kafka broker at {servers} refused: {exc}") from exc
        why = "connection failed: is it running, is the address right?"
        raise CommandError(
            f"cannot reach the Kafka broker at {servers} ({why})", EXIT_UNAVAILABLE
        ) from exc
    except OSError as exc:
        raise CommandError(
            f"cannot reach the Kafka broker at {servers} ({exc.strerror or exc})", EXIT_UNAVAILABLE
        ) from exc


async def _partition_count(
    servers: str, topic: str, options: Mapping[str, Any], deadline: float | None
) -> tuple[int, bool]:
    """The partitions of ``topic``, looked up without creating it, and whether it was waited for.

    A topic that is not there yet is waited for (a target topic appears with its first
    forward, and a newcomer starts the tail first); exit 2 if it is still missing at
    ``deadline`` (the event loop's clock; None: wait until Ctrl-C).
    """
    loop = asyncio.get_running_loop()
    client = AIOKafkaClient(
        bootstrap_servers=servers,
        request_timeout_ms=int(DEFAULT_REQUEST_TIMEOUT_S * 1000),
        **options,
    )
    try:
        with _reaching(servers):
            await asyncio.wait_for(client.bootstrap(), DEFAULT_REQUEST_TIMEOUT_S)
            for attempt in itertools.count():
                counts = await asyncio.wait_for(
                    partition_counts(client, [topic]), DEFAULT_REQUEST_TIMEOUT_S
                )
                count = counts[topic]
                if count:
                    return count, attempt > 0
                if deadline is not None and loop.time() >= deadline:
                    break
                if attempt == 0:
                    click.echo(
                        f"topic {topic} does not exist yet on {servers}: waiting for it; "
                        "Ctrl-C stops",
                        err=True,
                    )
                wait = _TOPIC_POLL_S if deadline is None else deadline - loop.time()
                await asyncio.sleep(max(0.0, min(_TOPIC_POLL_S, wait)))
    finally:
        await client.close()
    raise CommandError(f"topic {topic!r} does not exist on {servers}", EXIT_USAGE)


async def _follow(
    servers: str,
    topic: str,
    from_beginning: bool,
    max_records: int | None,
    timeout: float | None,
    as_json: bool,
) -> int:
    """Print ``topic``'s records until ``max_records`` or ``timeout``; how many were printed."""
    # On the embedded broker: true end offsets, and records as they come (app.tansu_compat).
    await asyncio.to_thread(tansu_compat.maybe_install, servers, DEFAULT_REQUEST_TIMEOUT_S)
    options = _security_options()
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    count, created_since = await _partition_count(servers, topic, options, deadline)
    # A topic created since the tail started holds only records newer than the tail.
    from_beginning = from_beginning or created_since
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers,
        group_id=None,  # assigned partitions, no group: nothing is committed
        enable_auto_commit=False,
        request_timeout_ms=int(DEFAULT_REQUEST_TIMEOUT_S * 1000),
        **options,
    )
    printed = 0
    try:
        with _reaching(servers):
            await asyncio.wait_for(consumer.start(), DEFAULT_REQUEST_TIMEOUT_S)
            partitions = [TopicPartition(topic, p) for p in range(count)]
            consumer.assign(partitions)
            if from_beginning:
                await consumer.seek_to_beginning(*partitions)
            else:
                await consumer.seek_to_end(*partitions)
            start = "the oldest record" if from_beginning else "the end"
            plural = "" if count == 1 else "s"
            click.echo(
                f"following {topic} ({count} partition{plural}) from {start}; Ctrl-C stops",
                err=True,
            )
            while max_records is None or printed < max_records:
                wait = (
                    _TAIL_POLL_S if deadline is None else min(_TAIL_POLL_S, deadline - loop.time())
                )
                if wait <= 0:
                    break
                batch = await consumer.getmany(timeout_ms=int(wait * 1000))
                for records in batch.values():
                    for record in records[: None if max_records is None else max_records - printed]:
                        click.echo(
                            json.dumps(_record_data(record)) if as_json else _record_line(record)
                        )
                        printed += 1
    finally:
        await consumer.stop()
    return printed


@cli.command()
@click.argument("topic")
@click.option(
    "--from-beginning", is_flag=True, help="Start at the oldest record [default: new records only]."
)
@click.option(
    "-n",
    "--max",
    "max_records",
    type=click.IntRange(min=1),
    metavar="N",
    help="Stop after N records.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop after this long (exit 1 if --max records did not all come) [default: never].",
)
@bootstrap_option
@json_option
def tail(
    topic: str,
    from_beginning: bool,
    max_records: int | None,
    timeout: float | None,
    bootstrap: str | None,
    as_json: bool,
) -> None:
    """Print the records of TOPIC as they arrive, until Ctrl-C.

    One line per record: partition@offset, record time, key, value, headers and, for delayq's
    forwards, their lateness (record time minus delayq-due-ms). --json: one object per record.
    """
    with _client_errors(topic="TOPIC"):
        checked_topic(topic, "topic")
        servers = ",".join(bootstrap_list(default_bootstrap() if bootstrap is None else bootstrap))
    try:
        printed = asyncio.run(
            _follow(servers, topic, from_beginning, max_records, timeout, as_json)
        )
    except KeyboardInterrupt:
        return  # Ctrl-C is how a tail ends
    if max_records is not None and printed < max_records:
        raise CommandError(
            f"{printed} of {max_records} records from {topic} within {timeout:g}s", EXIT_FAILURE
        )


def main(argv: Sequence[str] | None = None) -> None:
    """The ``delayq`` console script."""
    cli.main(args=argv, prog_name="delayq")


if __name__ == "__main__":
    main()
