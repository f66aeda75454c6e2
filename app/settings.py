"""Settings: one pydantic class read from ``DELAYQ_*`` environment variables, validated at start.

A bad value stops the worker before it connects, with one line per offending variable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app import names
from app.durations import parse_duration_ms
from app.errors import SettingsError
from app.names import valid_topic_name

__all__ = ["Route", "Settings", "load_settings", "parse_routes"]


@dataclass(frozen=True, slots=True)
class Route:
    """A fixed-delay route: records on ``source`` go to ``target`` ``delay_ms`` later."""

    source: str
    delay_ms: int
    target: str


def parse_routes(spec: str) -> tuple[Route, ...]:
    """``"src=30m:dst, src2=5s:dst2"`` as routes (durations as in ``app.durations``)."""
    routes: list[Route] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        source, eq, rest = item.partition("=")
        delay, colon, target = rest.rpartition(":")
        if not (eq and colon and source.strip() and target.strip()):
            raise ValueError(f"route {item!r} is not SOURCE=DELAY:TARGET")
        source, target = source.strip(), target.strip()
        for topic in (source, target):
            if not valid_topic_name(topic):
                raise ValueError(f"route {item!r}: {topic!r} is not a valid topic name")
        if source == target:
            raise ValueError(f"route {item!r} forwards a topic to itself")
        delay_ms = parse_duration_ms(delay.strip())
        if delay_ms <= 0:
            raise ValueError(f"route {item!r}: the delay must be positive")
        routes.append(Route(source, delay_ms, target))
    if len({route.source for route in routes}) != len(routes):
        raise ValueError("a source topic appears in more than one route")
    return tuple(routes)


class Settings(BaseSettings):
    """Everything a worker can be told, from ``DELAYQ_<NAME>`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="DELAYQ_", frozen=True, extra="ignore")

    broker_url: str = Field(
        "kafka://127.0.0.1:9092",
        description="Kafka bootstrap servers, e.g. kafka://k1:9092;k2:9092. "
        "The default is the embedded broker started by `make run`.",
    )
    broker_kind: Literal["auto", "kafka", "embedded"] = Field(
        "auto",
        description="auto: ask the broker whether it is the embedded Tansu broker; "
        "its workarounds (app/tansu_compat.py) apply only then.",
    )
    app_id: str = Field("delayq", description="Consumer group id and prefix of internal topics.")
    ingest_topic: str = names.DEFAULT_INGEST_TOPIC
    dead_letter_topic: str = names.DEFAULT_DEAD_LETTER_TOPIC
    fired_topic: str = names.DEFAULT_FIRED_TOPIC
    partitions: int = Field(
        8, ge=1, le=10_000, description="Partitions of the ingest topic: caps the worker count."
    )
    replication_factor: int = Field(1, ge=1, le=32)
    standby_replicas: int = Field(1, ge=0, le=8)
    data_dir: Path = Field(Path("data"), description="Where RocksDB keeps the tables.")
    web_host: str = Field("127.0.0.1", description="HTTP binds here (loopback by default).")
    web_port: int = Field(6066, ge=1, le=65_535)
    api_token: SecretStr | None = Field(
        None,
        description="When set, requests that change jobs (POST /jobs, DELETE /jobs/{id}, the "
        "compatibility add/remove) need 'Authorization: Bearer <token>'. Every worker of a "
        "cluster needs the same token.",
    )
    advertised_url: str | None = Field(
        None,
        description="How other workers reach this one over HTTP (requests for jobs it owns are "
        "forwarded here). Default http://WEB_HOST:WEB_PORT; set it when WEB_HOST is 0.0.0.0.",
    )
    session_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Consumer group session timeout. Default: 2 s on the embedded broker "
        "(it holds joins for half of it), 10 s on a real cluster.",
    )
    heartbeat_interval_s: float | None = Field(
        None, gt=0, description="Default: 0.5 s embedded, 3 s on a real cluster."
    )
    fire_batch_max: int = Field(
        2_000, ge=1, le=100_000, description="Most jobs forwarded per partition per pass."
    )
    forward_timeout_s: float = Field(
        10.0, gt=0, description="How long one forward may wait for the broker before it fails."
    )
    forward_attempts: int = Field(
        5, ge=1, le=100, description="Failed forwards of a job before it is dead-lettered."
    )
    forward_retry_backoff_ms: int = Field(
        500, ge=1, description="First retry delay of a failed forward; doubles per attempt."
    )
    max_forward_bytes: int = Field(
        1_000_000,
        ge=1_024,
        description="Jobs whose forwarded record would be larger go to the dead-letter topic "
        "at once (set it to the target topics' max.message.bytes).",
    )
    max_clock_skew_ms: int = Field(
        60_000,
        ge=0,
        description="A delayq-delay-ms record timestamped further ahead of the worker's clock "
        "than this counts its delay from the time the worker reads it (and is counted).",
    )
    ingest_guard: bool = Field(
        True,
        description="A job due at T is forwarded only once its partition has applied every "
        "command the broker acknowledged before T, so a cancel or replace sent in time always "
        "wins; it costs lateness (docs/architecture.md, the ingest guard). false: forward as "
        "soon as due, and a cancel that the worker has not read yet loses.",
    )
    routes: str = Field(
        "",
        description="Fixed-delay routes SOURCE=DELAY:TARGET, comma separated, e.g. "
        "'orders-delay=30m:orders,retry-5s=5s:work': records on SOURCE (no delayq headers "
        "needed) reach TARGET DELAY after their timestamp.",
    )
    ack_timeout_s: float = Field(
        300.0,
        gt=0,
        description="A forwarded job whose removal was not seen within this is forwarded again. "
        "A safety net only (a failed removal record is handled at once): removals queue behind "
        "the ingest backlog, so a short value turns a backlog into duplicates.",
    )

    # -- Kafka security: passed to every Kafka client delayq creates ---------------------------
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    #: Never logged: pydantic prints it as '**********'.
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(None, description="CA bundle to verify the brokers.")
    ssl_certfile: Path | None = Field(None, description="Client certificate (mutual TLS).")
    ssl_keyfile: Path | None = None

    # -- Recovery ------------------------------------------------------------------------------
    bulk_restore_min_records: int = Field(
        1_000,
        ge=0,
        description="A changelog partition with at least this many records left to recover is "
        "read in bulk (tables/restore.py) before Faust replays the rest record by record; "
        "0 turns the bulk restore off.",
    )

    @field_validator("ingest_topic", "dead_letter_topic", "fired_topic")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        if not valid_topic_name(value):
            raise ValueError("not a valid Kafka topic name ([a-zA-Z0-9._-], 1-249 chars)")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _distinct_topics(self) -> Settings:
        topics = [self.ingest_topic, self.dead_letter_topic, self.fired_topic]
        if len(set(topics)) != len(topics):
            raise ValueError("ingest, dead-letter and fired topics must be distinct")
        for route in self.parsed_routes:
            if {route.source, route.target} & {*topics, self.changelog_topic}:
                raise ValueError(f"route {route.source}->{route.target} uses a delayq topic")
        session, heartbeat = self.session_timeout_s, self.heartbeat_interval_s
        if session and heartbeat and heartbeat >= session:
            raise ValueError("heartbeat_interval_s must be below session_timeout_s")
        return self

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: str) -> str:
        parse_routes(value)
        return value

    @property
    def parsed_routes(self) -> tuple[Route, ...]:
        """The fixed-delay routes (validated at start)."""
        return parse_routes(self.routes)

    @model_validator(mode="after")
    def _security(self) -> Settings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs DELAYQ_SASL_USERNAME "
                "and DELAYQ_SASL_PASSWORD"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        return self

    def ssl_context(self) -> Any:
        """The TLS context for SSL / SASL_SSL, or None."""
        if not self.security_protocol.endswith("SSL"):
            return None
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
            certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
            keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
        )

    def kafka_client_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments for the security settings (empty for PLAINTEXT)."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            password = self.sasl_password
            options["sasl_plain_password"] = password.get_secret_value() if password else None
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        return options

    @property
    def bootstrap_servers(self) -> str:
        """``broker_url`` as a plain ``host:port,...`` list for Kafka clients."""
        servers = [s.split("://", 1)[-1] for s in re.split(r"[;,]", self.broker_url)]
        return ",".join(s.strip() for s in servers if s.strip())

    @property
    def changelog_topic(self) -> str:
        """The changelog topic of the jobs table (named by Faust)."""
        return names.changelog_topic(self.app_id)

    def internal_topics(self) -> frozenset[str]:
        """Topics a job may not target: forwarding there would corrupt delayq itself."""
        sources = {route.source for route in self.parsed_routes}
        return frozenset({self.ingest_topic, self.fired_topic, self.changelog_topic, *sources})


def load_settings() -> Settings:
    """Settings from the environment, or :class:`SettingsError` naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            env = f"DELAYQ_{field.upper()}" if error["loc"] else "settings"
            lines.append(f"{env}: {error['msg']}")
        raise SettingsError("; ".join(lines)) from None
