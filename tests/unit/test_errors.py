"""app.errors: one tree of exceptions, light enough for the client; the exit codes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from app import embedded, errors
from app.cli import cli
from app.errors import EXIT_FAILURE, EXIT_USAGE, CommandError, DelayqError

ROOT = Path(__file__).resolve().parents[2]


def test_every_exported_class_is_a_delayq_error() -> None:
    classes = [getattr(errors, name) for name in errors.__all__ if name[0].isupper()]
    classes = [c for c in classes if isinstance(c, type)]
    assert len(classes) > 1
    assert all(issubclass(c, DelayqError) for c in classes)


def test_no_exception_class_is_defined_outside_app_errors() -> None:
    defined = []
    for path in [*ROOT.glob("app/**/*.py"), *ROOT.glob("tables/**/*.py")]:
        if path == ROOT / "app" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(base) for base in node.bases]
                if any(b.endswith(("Error", "Exception")) for b in bases):
                    defined.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert defined == []


def test_app_errors_imports_no_third_party_library() -> None:
    # The client imports app.errors and must stay light (no Faust, pydantic, click, aiokafka).
    code = (
        "import sys, app.errors; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'faust', 'mode', 'pydantic', 'click', 'aiokafka', 'aiohttp'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_old_runtime_errors_are_still_runtime_errors() -> None:
    # bench/durability.py catches WorkerNotReady as a RuntimeError.
    assert issubclass(errors.WorkerNotReady, RuntimeError)
    assert issubclass(errors.EmbeddedBrokerError, RuntimeError)


def test_delayq_reports_a_command_error_as_one_line_with_its_exit_code() -> None:
    result = CliRunner().invoke(cli, ["get", "some-job", "--url", "ftp://example.com"])
    assert result.exit_code == EXIT_USAGE
    assert result.output == (
        "delayq: error: --url: expected http://HOST:PORT, got 'ftp://example.com'\n"
    )


def test_a_command_error_inside_the_client_errors_keeps_its_exit_code() -> None:
    # CommandError is a DelayqError too; turning the client's errors into CommandErrors must
    # not turn an existing CommandError into a generic failure.
    from app.cli import _client_errors

    with pytest.raises(CommandError) as caught, _client_errors():
        raise CommandError("no good", EXIT_USAGE)
    assert caught.value.exit_code == EXIT_USAGE
    with pytest.raises(CommandError) as caught, _client_errors():
        raise DelayqError("refused")
    assert caught.value.exit_code == EXIT_FAILURE


def test_embedded_reports_a_bad_port_setting_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(embedded.EMBEDDED_PORT_ENV, "not-a-port")
    assert embedded.main(["broker"]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        f"delayq: {embedded.EMBEDDED_PORT_ENV} must be a port number, got 'not-a-port'\n"
    )
