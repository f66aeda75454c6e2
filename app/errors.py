"""All delayq exceptions, one tree."""

from __future__ import annotations

__all__ = [
    "BrokerUnavailable",
    "DelayqError",
    "ForwardFailed",
    "IngestTopicError",
    "InvalidRecord",
    "SettingsError",
    "UnsupportedLibraryVersion",
]


class DelayqError(Exception):
    """Base class of every delayq error."""


class SettingsError(DelayqError):
    """A setting from the environment is missing or invalid."""


class InvalidRecord(DelayqError):
    """An ingest record breaks the wire contract; it goes to the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ForwardFailed(DelayqError):
    """A due job could not be written to its target topic."""


class BrokerUnavailable(DelayqError):
    """The Kafka broker could not be reached, or did not acknowledge in time."""


class IngestTopicError(DelayqError):
    """The ingest topic a client was given is missing, or is not read by delayq's workers.

    Nothing was written: a client never creates the ingest topic.
    """


class UnsupportedLibraryVersion(DelayqError):
    """An installed faust-streaming, mode-streaming or aiokafka is not the version delayq pins.

    app/upstream/ overrides private parts of these libraries; another version may change them.
    Operator action: install the versions in pyproject.toml (``make venv``).
    """
