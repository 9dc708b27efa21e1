"""docker-compose.yml cannot run here (no Docker engine): check it against the code instead.

Each test ties the file to something it must agree with (the settings object, the CLI, the
worker's web routes, the Kafka and Postgres services it declares, the Dockerfile, the local
Kafka version, the README), so that a change on either side that breaks the production
shape fails here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from streams.cli.main import build_parser
from streams.settings import Settings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
BANDIT_SERVICES = ("migrate", "worker")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def _env(services: dict[str, Any], name: str) -> dict[str, str]:
    return {k: str(v) for k, v in services[name]["environment"].items()}


def _setting_names() -> set[str]:
    return {str(field.validation_alias) for field in Settings.model_fields.values()}


@pytest.mark.parametrize("name", BANDIT_SERVICES)
def test_environment_names_are_settings_and_parse(services: dict[str, Any], name: str) -> None:
    env = _env(services, name)
    unknown = set(env) - _setting_names()
    assert not unknown, f"{name} sets variables the settings object does not read: {unknown}"
    Settings(**env)  # every value parses (ranges, choices, the security rules)


def _cli_commands(service: dict[str, Any]) -> list[list[str]]:
    """The bandit-stream command lines a service runs (entrypoint `sh -c` or the image's)."""
    entrypoint = service.get("entrypoint")
    if entrypoint is not None:
        assert entrypoint[:2] == ["sh", "-c"], entrypoint
        lines = [shlex.split(part) for part in entrypoint[2].split("&&")]
        for words in lines:
            assert words[0] == "bandit-stream", words
        return [words[1:] for words in lines]
    return [list(service["command"])]  # the image's ENTRYPOINT is bandit-stream


@pytest.mark.parametrize("name", BANDIT_SERVICES)
def test_commands_are_real_cli_subcommands(services: dict[str, Any], name: str) -> None:
    parser = build_parser()
    for args in _cli_commands(services[name]):
        parsed = parser.parse_args(args)  # exits (SystemExit) on an unknown subcommand
        assert callable(parsed.handler), args


def test_the_migration_job_migrates_then_creates_topics(services: dict[str, Any]) -> None:
    commands = _cli_commands(services["migrate"])
    assert ["db", "migrate"] in commands and ["topics", "create"] in commands


def test_the_image_runs_the_cli_and_ships_its_data(services: dict[str, Any]) -> None:
    build = services["migrate"]["build"]
    dockerfile = (ROOT / build["context"] / build["dockerfile"]).read_text()
    assert re.search(r'^ENTRYPOINT \["bandit-stream"\]', dockerfile, re.MULTILINE)
    for copied in re.findall(r"^COPY (\S+)", dockerfile, re.MULTILINE):
        assert (ROOT / build["context"] / copied).exists(), f"the Dockerfile copies {copied}"
    built = {s["image"] for s in services.values() if "build" in s}
    for name in BANDIT_SERVICES:
        assert services[name]["image"] in built, f"{name}'s image is built by no service"


def test_dependencies_exist_and_wait_for_health(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for needed, how in service.get("depends_on", {}).items():
            assert needed in services, f"{name} depends on a service that does not exist"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[needed], f"{needed} has no healthcheck"
    assert services["worker"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


def test_workers_reach_the_declared_kafka(services: dict[str, Any]) -> None:
    kafka = _env(services, "kafka")
    advertised = {
        urlsplit(listener).netloc
        for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
        if listener.startswith("PLAINTEXT://")
    }
    for name in BANDIT_SERVICES:
        settings = Settings(**_env(services, name))
        for server in settings.bootstrap_servers.split(","):
            assert server.strip() in advertised, f"{name}: {server} is not a broker listener"
        assert settings.kafka_security_protocol == "PLAINTEXT"  # the only listener there


def test_workers_reach_the_declared_postgres(services: dict[str, Any]) -> None:
    pg = _env(services, "postgres")
    for name in BANDIT_SERVICES:
        dsn = urlsplit(Settings(**_env(services, name)).database_dsn)
        assert (dsn.hostname, dsn.port or 5432) == ("postgres", 5432), name
        assert dsn.username == pg["POSTGRES_USER"] and dsn.password == pg["POSTGRES_PASSWORD"]
        assert dsn.path.lstrip("/") == pg["POSTGRES_DB"], name


def test_topics_fit_the_single_broker(services: dict[str, Any]) -> None:
    brokers = len(_env(services, "kafka")["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
    for name in BANDIT_SERVICES:
        assert Settings(**_env(services, name)).replication_factor <= brokers, name


def test_kafka_is_the_version_the_local_services_run(services: dict[str, Any]) -> None:
    pom = (ROOT / "streams" / "services" / "kafka" / "pom.xml").read_text()
    local = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert local is not None
    assert services["kafka"]["image"] == f"apache/kafka:{local.group(1)}"


def test_worker_healthcheck_asks_the_worker_s_own_ready_page(services: dict[str, Any]) -> None:
    worker = services["worker"]
    settings = Settings(**_env(services, "worker"))
    probe = " ".join(worker["healthcheck"]["test"])
    url = re.search(r"https?://[^'\" ]+", probe)
    assert url is not None, probe
    parts = urlsplit(url.group(0))
    assert parts.port == settings.web_port
    assert settings.web_host in ("0.0.0.0", parts.hostname), "the probe cannot reach the server"
    app_source = (ROOT / "streams" / "app.py").read_text()
    assert f'@app.page("{parts.path}")' in app_source, f"the worker serves no {parts.path}"
    assert worker["deploy"]["replicas"] >= 2
