"""One frozen, typed settings object, read from the environment.

Every knob of the service lives here, so that a reader finds the whole configuration in one
place and the README's table can be checked against it (tests/unit/test_settings.py).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _project_root() -> Path:
    """The checkout this package runs from (for its `.local/` state), else the cwd."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


class Settings(BaseSettings):
    """Configuration of workers, CLI, local services, demo and benchmarks."""

    # hide_input_in_errors: a refused value may be a secret (DATABASE_URL, KAFKA_SASL_PASSWORD)
    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    # --- where the real services are; unset means "the project's own local services" ---
    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    database_url: SecretStr | None = Field(default=None, validation_alias="DATABASE_URL")

    # --- Kafka security: every client is built by streams/kafka_clients.py with these ---
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", validation_alias="KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str | None = Field(default=None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, validation_alias="KAFKA_SASL_PASSWORD"
    )
    kafka_ssl_cafile: Path | None = Field(default=None, validation_alias="KAFKA_SSL_CAFILE")
    kafka_ssl_certfile: Path | None = Field(default=None, validation_alias="KAFKA_SSL_CERTFILE")
    kafka_ssl_keyfile: Path | None = Field(default=None, validation_alias="KAFKA_SSL_KEYFILE")

    # --- local services started by `bandit-stream services up` ---
    state_dir: Path = Field(
        default_factory=lambda: _project_root() / ".local", validation_alias="BANDIT_STATE_DIR"
    )
    local_kafka_port: int = Field(default=19092, validation_alias="BANDIT_LOCAL_KAFKA_PORT")
    local_postgres_port: int = Field(default=15432, validation_alias="BANDIT_LOCAL_POSTGRES_PORT")
    kafka_heap: str = Field(default="512m", validation_alias="BANDIT_KAFKA_HEAP")

    # --- topics ---
    topic_prefix: str = Field(default="", validation_alias="BANDIT_TOPIC_PREFIX")
    partitions: int = Field(default=8, ge=1, le=1024, validation_alias="BANDIT_PARTITIONS")
    replication_factor: int = Field(default=1, ge=1, validation_alias="BANDIT_REPLICATION_FACTOR")

    # --- the worker ---
    app_id: str = Field(default="bandit-stream", validation_alias="BANDIT_APP_ID")
    commit_interval_s: float = Field(default=0.5, gt=0, validation_alias="BANDIT_COMMIT_INTERVAL_S")
    session_timeout_s: float = Field(
        default=15.0, gt=0, validation_alias="BANDIT_SESSION_TIMEOUT_S"
    )
    web_port: int = Field(default=6066, validation_alias="BANDIT_WEB_PORT")
    web_host: str = Field(default="127.0.0.1", validation_alias="BANDIT_WEB_HOST")
    # the dashboard's token: required when set, and always when web_host is not loopback
    dashboard_token: SecretStr | None = Field(
        default=None, validation_alias="BANDIT_DASHBOARD_TOKEN"
    )
    log_level: str = Field(default="info", validation_alias="BANDIT_LOG_LEVEL")

    # --- stages ---
    batch_max: int = Field(default=2000, ge=1, validation_alias="BANDIT_BATCH_MAX")
    track_batch_within_s: float = Field(
        default=0.05, gt=0, validation_alias="BANDIT_TRACK_BATCH_WITHIN_S"
    )
    weights_min_change: float = Field(
        default=0.005, ge=0, validation_alias="BANDIT_WEIGHTS_MIN_CHANGE"
    )
    weights_interval_s: float = Field(
        default=0.5, gt=0, validation_alias="BANDIT_WEIGHTS_INTERVAL_S"
    )
    insights_interval_s: float = Field(
        default=10.0, gt=0, validation_alias="BANDIT_INSIGHTS_INTERVAL_S"
    )
    wait_grace_s: float = Field(default=600.0, ge=0, validation_alias="BANDIT_WAIT_GRACE_S")
    unknown_experiment_wait_s: float = Field(
        default=300.0, ge=0, validation_alias="BANDIT_UNKNOWN_EXPERIMENT_WAIT_S"
    )

    # --- input limits ---
    max_event_bytes: int = Field(default=65_536, ge=256, validation_alias="BANDIT_MAX_EVENT_BYTES")
    max_future_skew_s: float = Field(
        default=300.0, ge=0, validation_alias="BANDIT_MAX_FUTURE_SKEW_S"
    )

    @field_validator("database_url")
    @classmethod
    def _database_url_is_well_formed(cls, value: SecretStr | None) -> SecretStr | None:
        """Refuse a URL that drivers would misread, before they echo a piece of the password.

        An unencoded `#`, `/`, `?` or `@` in the password moves the rest of it into the host,
        port, path or fragment, and asyncpg's error then quotes it.
        """
        dsn = "" if value is None else value.get_secret_value()
        if "://" not in dsn:
            return value  # unset, or libpq's keyword form
        parts = urlsplit(dsn)
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            well_formed = False
        else:
            well_formed = not parts.fragment and "@" not in parts.path + parts.query
        if not well_formed:
            msg = (
                "DATABASE_URL is not a well-formed URL; percent-encode special characters in the "
                "user name and password (# as %23, / as %2F, ? as %3F, @ as %40, : as %3A)"
            )
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Self:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            msg = f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and _PASSWORD"
            raise ValueError(msg)
        files = {
            "KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
            "KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
            "KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile,
        }
        if not protocol.endswith("SSL") and (named := [k for k, v in files.items() if v]):
            msg = f"{', '.join(named)} set, but KAFKA_SECURITY_PROTOCOL={protocol} uses no TLS"
            raise ValueError(msg)
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            msg = "KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE (the client certificate)"
            raise ValueError(msg)
        return self

    @property
    def kafka_configured(self) -> bool:
        return self.kafka_bootstrap_servers is not None

    @property
    def database_configured(self) -> bool:
        return self.database_url is not None

    @property
    def bootstrap_servers(self) -> str:
        """The configured broker, else the project's local one."""
        if self.kafka_bootstrap_servers:
            return self.kafka_bootstrap_servers
        return f"127.0.0.1:{self.local_kafka_port}"

    def environment(self) -> dict[str, str]:
        """These settings as the environment of a child process (a worker subprocess).

        Every field that is set, under its variable; the broker and the database resolved, so
        that the child uses the ones this process uses and starts none; secrets in clear text,
        for the child's environment only.
        """
        env = {
            str(f.validation_alias): (
                value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            )
            for name, f in type(self).model_fields.items()
            if (value := getattr(self, name)) is not None  # unset stays unset, not "None"
        }
        return env | {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "DATABASE_URL": self.database_dsn,
        }

    @property
    def database_dsn(self) -> str:
        """The configured database, else the project's local cluster."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"postgresql://postgres@127.0.0.1:{self.local_postgres_port}/bandit"


_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by `***`, for log lines and error messages.

    Covers URLs (`postgresql://user:secret@host/db`, `?password=secret`) and libpq's
    keyword form (`host=h password=secret`).
    """
    parts = urlsplit(dsn) if "://" in dsn else None
    if parts is not None and "@" in parts.netloc:
        userinfo, _, hosts = parts.netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hosts}"
        dsn = urlunsplit(parts._replace(netloc=netloc))
    return _KEYWORD_PASSWORD.sub(r"\1***", dsn)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests build their own `Settings(...)`)."""
    return Settings()
