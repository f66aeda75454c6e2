"""Settings are validated at start: a bad value stops the worker with one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.errors import SettingsError
from app.settings import Settings, load_settings
from tests.support import ROOT


def test_defaults_point_at_the_embedded_broker_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BROKER_URL", "WEB_HOST", "PARTITIONS"):
        monkeypatch.delenv(f"DELAYQ_{name}", raising=False)
    settings = Settings()
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.web_host == "127.0.0.1"
    assert settings.changelog_topic == "delayq-jobs-changelog"
    assert settings.internal_topics() == {
        "delayq-ingest",
        "delayq-fired",
        "delayq-jobs-changelog",
    }


def test_broker_url_lists_become_bootstrap_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELAYQ_BROKER_URL", "kafka://k1:9092;kafka://k2:9093, k3:9094")
    assert load_settings().bootstrap_servers == "k1:9092,k2:9093,k3:9094"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DELAYQ_PARTITIONS": "0"}, "DELAYQ_PARTITIONS"),
        ({"DELAYQ_PARTITIONS": "many"}, "DELAYQ_PARTITIONS"),
        ({"DELAYQ_INGEST_TOPIC": "bad topic"}, "DELAYQ_INGEST_TOPIC"),
        ({"DELAYQ_FIRED_TOPIC": "delayq-ingest"}, "distinct"),
        ({"DELAYQ_SESSION_TIMEOUT_S": "2", "DELAYQ_HEARTBEAT_INTERVAL_S": "3"}, "heartbeat"),
        ({"DELAYQ_BROKER_KIND": "zookeeper"}, "DELAYQ_BROKER_KIND"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert message in str(caught.value)


def test_the_worker_refuses_to_start_on_a_bad_setting() -> None:
    # Given a bad partition count, when the worker starts
    result = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", "worker"],
        cwd=ROOT,
        env={"DELAYQ_PARTITIONS": "-1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it exits with code 2 and one line naming the variable, no traceback
    assert result.returncode == 2
    assert "DELAYQ_PARTITIONS" in result.stderr
    assert "Traceback" not in result.stderr


def test_sasl_settings_reach_kafka_clients_and_never_print_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DELAYQ_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("DELAYQ_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("DELAYQ_SASL_USERNAME", "svc")
    monkeypatch.setenv("DELAYQ_SASL_PASSWORD", "hunter2")
    settings = load_settings()
    assert settings.kafka_client_options() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "hunter2",
    }
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)


def test_sasl_without_credentials_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELAYQ_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SettingsError, match="DELAYQ_SASL_USERNAME"):
        load_settings()


def test_plaintext_adds_no_client_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DELAYQ_SECURITY_PROTOCOL", raising=False)
    assert Settings().kafka_client_options() == {}


def test_routes_parse_and_refuse_loops_and_bad_delays() -> None:
    from app.settings import Route, parse_routes

    assert parse_routes(" a-delay=30m:a , retry.5s=5s:work ") == (
        Route("a-delay", 1_800_000, "a"),
        Route("retry.5s", 5_000, "work"),
    )
    assert parse_routes("") == ()
    for bad in ("a=5s", "a=5s:a", "a=0s:b", "a=soon:b", "a b=5s:c", "a=5s:b,a=6s:c"):
        with pytest.raises(ValueError):
            parse_routes(bad)


def test_a_route_may_not_use_delayq_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELAYQ_ROUTES", "delayq-ingest=5s:x")
    with pytest.raises(SettingsError, match="delayq topic"):
        load_settings()
