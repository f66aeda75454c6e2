"""app.endpoints: where the client, the CLI and the example look for the broker by default."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import ModuleType

import pytest

from app import endpoints, settings
from app.client import AsyncDelayQueue
from app.endpoints import default_bootstrap, default_web_url
from app.errors import SettingsError
from tests.support import ROOT

EXAMPLE = ROOT / "examples" / "schedule_confluent.py"

ENVIRONMENTS: list[tuple[dict[str, str], str]] = [
    ({}, "127.0.0.1:9092"),
    ({"DELAYQ_EMBEDDED_PORT": "19092"}, "127.0.0.1:19092"),
    ({"DELAYQ_EMBEDDED_PORT": " "}, "127.0.0.1:9092"),
    ({"DELAYQ_BROKER_URL": "kafka://k1:9092;k2:9093"}, "k1:9092,k2:9093"),
    ({"DELAYQ_BROKER_URL": "k1:9092", "DELAYQ_EMBEDDED_PORT": "19092"}, "k1:9092"),
]


@pytest.mark.parametrize(("environ", "expected"), ENVIRONMENTS)
def test_the_broker_url_wins_then_the_embedded_port(environ: dict[str, str], expected: str) -> None:
    assert default_bootstrap(environ) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DELAYQ_EMBEDDED_PORT": "port"}, "DELAYQ_EMBEDDED_PORT: 'port' is not a port"),
        ({"DELAYQ_EMBEDDED_PORT": "70000"}, "DELAYQ_EMBEDDED_PORT: '70000' is not a port"),
        ({"DELAYQ_BROKER_URL": " ; "}, "DELAYQ_BROKER_URL: no broker address"),
    ],
)
def test_a_bad_variable_is_a_settings_error_naming_it(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=f"^{message}"):
        default_bootstrap(environ)


def test_the_web_url_follows_the_web_port() -> None:
    assert default_web_url({}) == "http://127.0.0.1:6066"
    assert default_web_url({"DELAYQ_WEB_PORT": "16066"}) == "http://127.0.0.1:16066"


def test_the_defaults_are_the_workers() -> None:
    fields = settings.Settings.model_fields
    assert fields["broker_url"].default == f"kafka://127.0.0.1:{endpoints.DEFAULT_BROKER_PORT}"
    assert fields["web_port"].default == endpoints.DEFAULT_WEB_PORT


def test_the_python_client_uses_the_same_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DELAYQ_BROKER_URL", raising=False)
    monkeypatch.setenv("DELAYQ_EMBEDDED_PORT", "19092")
    assert AsyncDelayQueue(None, "ingest").bootstrap_servers == ["127.0.0.1:19092"]
    monkeypatch.setenv("DELAYQ_BROKER_URL", "kafka://k1:9092")
    assert AsyncDelayQueue(None, "ingest").bootstrap_servers == ["k1:9092"]


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("schedule_confluent", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("environ", "expected"), ENVIRONMENTS)
def test_the_example_keeps_the_same_rule(
    environ: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The example imports nothing of delayq: its copy of the rule must stay equal.
    for name in ("DELAYQ_BROKER_URL", "DELAYQ_EMBEDDED_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert _example().default_bootstrap() == expected


def test_the_examples_help_shows_its_default_bootstrap() -> None:
    # Given the port `make run` was given / When the example's --help is asked for
    env = {"DELAYQ_EMBEDDED_PORT": "19092", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--help"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
        text=True,
    )
    # Then it shows the bootstrap it would use
    assert done.returncode == 0, done.stderr
    assert "(default: 127.0.0.1:19092, from $DELAYQ_BROKER_URL" in " ".join(done.stdout.split())
