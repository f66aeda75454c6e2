"""All delayq exceptions, one tree: :class:`DelayqError` and its subclasses, grouped by where
they arise.

Imported by the light client: nothing here may import Faust, pydantic, click or aiokafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [  # noqa: RUF022 (grouped like the tree below, not sorted)
    "DelayqError",
    # configuration
    "SettingsError",
    # the wire contract
    "InvalidRecord",
    # the broker
    "ApiUnavailable",
    "FrozenTooLong",
    "BrokerUnavailable",
    "EmbeddedBrokerError",
    "ForwardFailed",
    "IngestTopicError",
    # the libraries delayq builds on
    "UnsupportedLibraryVersion",
    # the HTTP API
    "ApiError",
    "CompatApiError",
    # the command lines
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CommandError",
    # worker processes (tests, bench, chaos)
    "WorkerNotReady",
]


class DelayqError(Exception):
    """Base class of every delayq error."""


# --- configuration ---------------------------------------------------------------------------


class SettingsError(DelayqError):
    """A setting from the environment is missing or invalid."""


# --- the wire contract -----------------------------------------------------------------------


class InvalidRecord(DelayqError):
    """An ingest record breaks the wire contract; it goes to the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- the broker ------------------------------------------------------------------------------


class BrokerUnavailable(DelayqError):
    """The Kafka broker could not be reached, or did not acknowledge in time."""


class FrozenTooLong(DelayqError):
    """The worker's process stood still longer than its group session allows: it writes no
    more (app/freeze.py)."""


class ApiUnavailable(DelayqError):
    """A worker's HTTP API could not be reached, or refused the request (the client's
    ``cancel(..., wait=True)``)."""


class ForwardFailed(DelayqError):
    """A due job could not be written to its target topic."""


class IngestTopicError(DelayqError):
    """The ingest topic a client was given is missing, or is not read by delayq's workers.

    Nothing was written: a client never creates the ingest topic.
    """


# A RuntimeError too, as it was before it joined this tree: callers may catch that.
class EmbeddedBrokerError(DelayqError, RuntimeError):
    """The embedded broker (Tansu, ``make run``) could not be started."""


# --- the HTTP API ----------------------------------------------------------------------------


class ApiError(DelayqError):
    """An error answer of the native HTTP API: its status, a message, and for a 422 the
    problems field by field (``app.api.models.FieldError``); ``retry_after`` (seconds) for
    temporary ones (503). ``app.api.models.error_reply`` renders it."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: Sequence[Any] = (),
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = list(errors)
        self.retry_after = retry_after


class CompatApiError(DelayqError):
    """A refused request of the go-delayqueue-compatible API: answered HTTP 200 with ``code``
    (one of ``app.api.compat``'s) and ``message`` in the body."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- the command lines -----------------------------------------------------------------------

#: Exit codes of ``delayq`` and ``python -m app.embedded``.
EXIT_OK = 0
#: The broker (or the API) refused the command for another reason.
EXIT_FAILURE = 1
#: Bad arguments, input or DELAYQ_* settings: fix the command line.
EXIT_USAGE = 2
#: The broker could not be reached or did not answer in time: try again later.
EXIT_UNAVAILABLE = 3
#: Interrupted (Ctrl-C), as shells report SIGINT.
EXIT_INTERRUPTED = 130


class CommandError(DelayqError):
    """A failed command of ``delayq`` or ``python -m app.embedded``: a one-line message for
    the user, and the exit code that goes with it."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


# --- worker processes ------------------------------------------------------------------------


# A RuntimeError too, as it was before it joined this tree: bench/durability.py catches that.
class WorkerNotReady(DelayqError, RuntimeError):
    """A worker subprocess exited, or did not log ``app.workerproc.READY_LINE`` in time."""


# --- the libraries delayq builds on ----------------------------------------------------------


class UnsupportedLibraryVersion(DelayqError):
    """An installed faust-streaming, mode-streaming or aiokafka is not the version delayq pins.

    app/upstream/ overrides private parts of these libraries; another version may change them.
    Operator action: install the versions in pyproject.toml (``make venv``).
    """
