"""The ``delayq`` command line: schedule and cancel jobs from a shell (``delayq --help``).

    delayq schedule --target reminders --delay 30m --key user-7 'time to stretch'
    echo '{"report": 42}' | delayq schedule -t reports --at 2030-05-01T12:00:00Z --json -
    delayq cancel 3f2a9c...

Output is one sentence per command, or one JSON object with ``--json``. Errors are one line on
stderr, ``delayq: error: ...``, with the exit code saying what kind: :data:`EXIT_USAGE` for bad
input or settings, :data:`EXIT_UNAVAILABLE` when the broker cannot be reached, :data:`EXIT_FAILURE`
for anything else the broker refused.

Commands talking to Kafka take :func:`kafka_options`; every command takes :func:`json_option` and
prints with :func:`emit`, and reports failures by raising :class:`CommandError` (or a click
``UsageError``): a new command (e.g. one asking the HTTP API) only has to follow that.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, TypeVar

import click

from app.client import DEFAULT_REQUEST_TIMEOUT_S, DelayQueue, ScheduledJob
from app.durations import format_duration_ms, format_time_ms, parse_duration_ms, parse_time_ms
from app.errors import BrokerUnavailable, DelayqError, SettingsError
from app.times import now_ms

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CommandError",
    "cli",
    "emit",
    "json_option",
    "kafka_options",
    "main",
]

EXIT_OK = 0
#: The broker (or the API) refused the command for another reason.
EXIT_FAILURE = 1
#: Bad arguments, input or DELAYQ_* settings: fix the command line.
EXIT_USAGE = 2
#: The broker could not be reached or did not answer in time: try again later.
EXIT_UNAVAILABLE = 3
#: Interrupted (Ctrl-C), as shells report SIGINT.
EXIT_INTERRUPTED = 130

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
    "delay": "--delay",
    "at": "--at",
}


class CommandError(click.ClickException):
    """A failed command: its one-line message and its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
    except SettingsError as exc:
        raise CommandError(f"invalid settings: {exc}", EXIT_USAGE) from exc
    except BrokerUnavailable as exc:
        raise CommandError(str(exc), EXIT_UNAVAILABLE) from exc
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
    """``--json``: print one JSON object instead of a sentence."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON object instead of a sentence."
    )(func)


def kafka_options(func: _F) -> _F:
    """``--bootstrap``, ``--ingest-topic`` and ``--timeout``, for commands that write to Kafka."""
    func = click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_REQUEST_TIMEOUT_S,
        show_default=True,
        metavar="SECONDS",
        help="How long to wait for the broker.",
    )(func)
    func = click.option(
        "--ingest-topic",
        metavar="TOPIC",
        help="delayq's ingest topic [default: $DELAYQ_INGEST_TOPIC or delayq-ingest].",
    )(func)
    return click.option(
        "--bootstrap",
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers [default: $DELAYQ_BROKER_URL or 127.0.0.1:9092].",
    )(func)


def _queue(bootstrap: str | None, ingest_topic: str | None, timeout: float) -> DelayQueue:
    options = None
    if any(
        name.startswith(("DELAYQ_SECURITY", "DELAYQ_SASL", "DELAYQ_SSL")) for name in os.environ
    ):
        from app.settings import load_settings  # only then: it needs pydantic

        options = load_settings().kafka_client_options()
    return DelayQueue(bootstrap, ingest_topic, request_timeout=timeout, producer_options=options)


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
    """Schedule and cancel delayed Kafka records through delayq.

    Exit codes: 0 done, 1 refused, 2 bad input, 3 broker unreachable.
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


def _due_sentence(job: ScheduledJob, target: str) -> str:
    remaining = job.due_ms - now_ms()
    when = f"in {format_duration_ms(remaining)}" if remaining > 0 else "due now"
    return f"scheduled job {job.job_id} for {format_time_ms(job.due_ms)} ({when}) to {target}"


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
    key: str | None,
    job_id: str | None,
    file: IO[bytes] | None,
    tombstone: bool,
    headers: list[tuple[str, bytes]],
    bootstrap: str | None,
    ingest_topic: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Forward VALUE to a topic after --delay or at --at.

    VALUE is the record's value as typed; '-' reads it from stdin, --file from a file.
    """
    if (delay is None) == (at is None):
        raise click.UsageError("give exactly one of --delay or --at")
    record = _read_value(value, file, tombstone)
    with _client_errors():
        queue = _queue(bootstrap, ingest_topic, timeout)
        try:
            job = queue.schedule(
                record,
                target=target,
                delay=delay,
                at=at,
                key=None if key is None else _arg_bytes(key),
                job_id=job_id,
                headers=headers,
            )
        finally:
            queue.close()
    data = {
        "job_id": job.job_id,
        "due_ms": job.due_ms,
        "due_at": format_time_ms(job.due_ms),
        "target": target,
    }
    emit(as_json, data, _due_sentence(job, target))


@cli.command()
@click.argument("job_id", metavar="ID")
@kafka_options
@json_option
def cancel(
    job_id: str, bootstrap: str | None, ingest_topic: str | None, timeout: float, as_json: bool
) -> None:
    """Cancel the pending job ID (a job that is not pending is left alone)."""
    with _client_errors(job_id="ID"):
        queue = _queue(bootstrap, ingest_topic, timeout)
        try:
            queue.cancel(job_id)
        finally:
            queue.close()
    emit(as_json, {"job_id": job_id, "cancel_sent": True}, f"cancel of job {job_id} sent")


def main(argv: Sequence[str] | None = None) -> None:
    """The ``delayq`` console script."""
    cli.main(args=argv, prog_name="delayq")


if __name__ == "__main__":
    main()
