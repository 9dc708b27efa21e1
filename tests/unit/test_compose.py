"""docker-compose.yml cannot run here (no Docker engine): check it against the code instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streams.settings import Settings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _setting_names() -> set[str]:
    return {str(field.validation_alias) for field in Settings.model_fields.values()}


def test_services_of_the_production_shape(compose: dict) -> None:
    assert set(compose["services"]) == {"kafka", "postgres", "migrate", "worker"}
    assert compose["services"]["kafka"]["image"] == "apache/kafka:4.4.0"
    for name in ("kafka", "postgres", "worker"):
        assert "healthcheck" in compose["services"][name], name
    assert compose["services"]["worker"]["deploy"]["replicas"] >= 2


def test_workers_wait_for_migrations_which_wait_for_healthy_services(compose: dict) -> None:
    services = compose["services"]
    assert services["worker"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert {k: v["condition"] for k, v in services["migrate"]["depends_on"].items()} == {
        "kafka": "service_healthy",
        "postgres": "service_healthy",
    }


def test_environment_names_are_settings(compose: dict) -> None:
    known = _setting_names()
    for name in ("migrate", "worker"):
        env = compose["services"][name]["environment"]
        unknown = set(env) - known
        assert not unknown, f"{name} sets variables the settings object does not read: {unknown}"
        Settings(**env)  # every value parses


def test_kafka_kraft_single_node_settings(compose: dict) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == 1, "one broker: transactional producers need RF 1 / min ISR 1"


def test_the_image_is_built_from_a_file_that_exists(compose: dict) -> None:
    build = compose["services"]["migrate"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()
