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
