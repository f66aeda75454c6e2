"""The wire contract shared by the client, the CLI, the HTTP API and the worker: header names,
topic names and Kafka's rule for them, the job-id limit.

The one copy of each: the client imports this module and must not import the worker's (Faust,
pydantic), so nothing here imports anything but the standard library. Header names are the public
contract (README, "Wire contract"); change them only with a new major version.
"""

from __future__ import annotations

import re

__all__ = [
    "DEFAULT_DEAD_LETTER_TOPIC",
    "DEFAULT_FIRED_TOPIC",
    "DEFAULT_INGEST_TOPIC",
    "HEADER_CRON",
    "HEADER_DELAY_MS",
    "HEADER_DUE_MS",
    "HEADER_ERROR",
    "HEADER_EVERY_MS",
    "HEADER_JOB_ID",
    "HEADER_KEY",
    "HEADER_MOVED_FROM",
    "HEADER_PREFIX",
    "HEADER_TARGET",
    "HEADER_TIMEZONE",
    "HEADER_UNTIL_MS",
    "JOBS_TABLE",
    "MAX_JOB_ID_BYTES",
    "changelog_topic",
    "valid_topic_name",
]

HEADER_PREFIX = "delayq-"
#: Schedule: the topic the job is forwarded to. Its absence (with a null value) means cancel.
HEADER_TARGET = "delayq-target"
#: Schedule: absolute due time, epoch milliseconds, decimal ASCII.
HEADER_DUE_MS = "delayq-due-ms"
#: Schedule: delay in milliseconds added to the record's timestamp, decimal ASCII.
HEADER_DELAY_MS = "delayq-delay-ms"
#: Schedule: key of the forwarded record (default: the job id).
HEADER_KEY = "delayq-key"
#: Recurring schedule: a cron rule (five fields, or @hourly, @daily, @weekly, @monthly,
#: @yearly), read in ``delayq-timezone``.
HEADER_CRON = "delayq-cron"
#: Recurring schedule: the IANA time zone of ``delayq-cron`` (default UTC).
HEADER_TIMEZONE = "delayq-timezone"
#: Recurring schedule: a fixed interval in milliseconds, decimal ASCII.
HEADER_EVERY_MS = "delayq-every-ms"
#: Recurring schedule: no occurrence after this, epoch milliseconds, decimal ASCII.
HEADER_UNTIL_MS = "delayq-until-ms"
#: Forwarded and dead-lettered records: the job id, stable across re-deliveries.
HEADER_JOB_ID = "delayq-job-id"
#: Internal, set by delayq: a command moved to its job's home partition, from
#: ``"{partition}:{offset}"`` of the ingest topic (app/moving.py). Applied where it lands.
HEADER_MOVED_FROM = "delayq-moved-from"
#: Dead-lettered records: why.
HEADER_ERROR = "delayq-error"

DEFAULT_INGEST_TOPIC = "delayq-ingest"
DEFAULT_DEAD_LETTER_TOPIC = "delayq-dead-letters"
#: Internal: acknowledgements of forwarded jobs, co-partitioned with the ingest topic.
DEFAULT_FIRED_TOPIC = "delayq-fired"
#: The table of pending jobs; its changelog topic is ``{app_id}-jobs-changelog``.
JOBS_TABLE = "jobs"

#: Job ids longer than this are refused: they are stored twice per job and travel in headers.
MAX_JOB_ID_BYTES = 1024

#: Kafka's rule for topic names.
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def valid_topic_name(name: str) -> bool:
    """Whether Kafka accepts ``name`` as a topic name."""
    return bool(_TOPIC_NAME.fullmatch(name)) and name not in {".", ".."}


def changelog_topic(app_id: str) -> str:
    """The changelog topic of the workers' jobs table (Faust names it after ``DELAYQ_APP_ID``)."""
    return f"{app_id}-{JOBS_TABLE}-changelog"
