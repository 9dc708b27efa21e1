"""The README's configuration table and the settings object name the same variables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streams.settings import Settings

pytestmark = pytest.mark.unit
README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_variables() -> set[str]:
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z_]+)` \|", section, flags=re.MULTILINE))


def test_readme_table_lists_exactly_the_settings() -> None:
    aliases = {str(field.validation_alias) for field in Settings.model_fields.values()}
    assert _readme_variables() == aliases


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    monkeypatch.setenv("BANDIT_PARTITIONS", "12")
    settings = Settings()
    assert settings.bootstrap_servers == "broker:9092"
    assert settings.kafka_configured
    assert settings.partitions == 12


def test_local_services_are_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = Settings(BANDIT_LOCAL_KAFKA_PORT=1234, BANDIT_LOCAL_POSTGRES_PORT=5678)
    assert not settings.kafka_configured
    assert settings.bootstrap_servers == "127.0.0.1:1234"
    assert settings.database_dsn == "postgresql://postgres@127.0.0.1:5678/bandit"


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTXT")
    with pytest.raises(ValueError, match="SASL_SSL"):
        Settings()


def test_a_child_reads_back_the_settings_of_its_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    parent = Settings(
        BANDIT_LOCAL_KAFKA_PORT=1234,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_USERNAME="svc",
        KAFKA_SASL_PASSWORD="s3cret",
        BANDIT_PARTITIONS=12,
        BANDIT_TRACK_BATCH_WITHIN_S=0.125,
    )
    env = parent.environment()
    # the child starts no service of its own: the local ones are named, not left unset
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:1234"
    assert env["DATABASE_URL"] == parent.database_dsn
    assert env["KAFKA_SASL_PASSWORD"] == "s3cret"  # revealed for the child, not "**********"
    assert "KAFKA_SSL_CAFILE" not in env  # unset stays unset, not "None"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = Settings()
    for name in Settings.model_fields:
        if name not in {"kafka_bootstrap_servers", "database_url"}:
            assert getattr(child, name) == getattr(parent, name), name
    assert child.bootstrap_servers == parent.bootstrap_servers
    assert child.database_dsn == parent.database_dsn
