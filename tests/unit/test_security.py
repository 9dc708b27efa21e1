"""Security basics: TLS/SASL reach every Kafka client, secrets stay out of reprs and messages,
the worker's web server listens on the loopback interface unless told otherwise."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
from pathlib import Path

import certifi
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streams import kafka_clients
from streams.settings import Settings, redact_dsn

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-Pa55"


def _settings(**env: str) -> Settings:
    return Settings(KAFKA_BOOTSTRAP_SERVERS="b1:9093, b2:9093", **env)


def _sasl_ssl(**env: str) -> Settings:
    return _settings(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME="bandit",
        KAFKA_SASL_PASSWORD=SECRET,
        **env,
    )


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    settings = _settings()
    assert kafka_clients.security_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert kafka_clients.faust_credentials(settings) is None
    assert kafka_clients.faust_broker(settings) == {
        "broker": ["kafka://b1:9093", "kafka://b2:9093"],
        "broker_credentials": None,
    }


def test_sasl_ssl_options_verify_the_broker() -> None:
    options = kafka_clients.security_options(_sasl_ssl(KAFKA_SSL_CAFILE=certifi.where()))
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "bandit",
        "sasl_plain_password": SECRET,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.get_ca_certs(), "the CA file was loaded"


def test_sasl_plaintext_has_no_tls() -> None:
    settings = _settings(
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_USERNAME="u", KAFKA_SASL_PASSWORD="p"
    )
    options = kafka_clients.security_options(settings)
    assert "ssl_context" not in options
    assert options["sasl_mechanism"] == "PLAIN"


@pytest.mark.parametrize(
    "env",
    [
        {"KAFKA_SECURITY_PROTOCOL": "SSL"},
        {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u",
         "KAFKA_SASL_PASSWORD": "p", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"},
        {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u",
         "KAFKA_SASL_PASSWORD": "p"},
    ],
)  # fmt: skip
def test_faust_gets_the_same_options_as_the_plain_clients(env: dict[str, str]) -> None:
    """faust turns broker_credentials into aiokafka options itself: they must agree."""
    settings = _settings(**env)
    ours = kafka_clients.security_options(settings)
    theirs = dict(credentials_to_aiokafka_auth(kafka_clients.faust_credentials(settings)))
    assert {k: v for k, v in theirs.items() if k != "ssl_context"} == {
        k: v for k, v in ours.items() if k != "ssl_context"
    }
    assert ("ssl_context" in ours) == (theirs.get("ssl_context") is not None)


async def test_every_client_takes_the_options() -> None:
    settings = _sasl_ssl()
    consumer = kafka_clients.consumer(settings, "some-topic", group_id=None)
    producer = kafka_clients.producer(settings, acks="all")
    admin = kafka_clients.admin(settings, bootstrap_servers="elsewhere:9093")  # overrides win
    await consumer.stop()
    await producer.stop()
    await admin.close()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"},
         "needs KAFKA_SASL_USERNAME"),
        ({"KAFKA_SSL_CAFILE": "/ca.pem"}, "uses no TLS"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": "/k.pem"},
         "KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "SASL_SSL"),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "SCRAM-SHA-512"),
    ],
)  # fmt: skip
def test_incomplete_security_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _settings(**env)


def test_a_missing_ca_file_fails_when_the_client_is_built(tmp_path: Path) -> None:
    settings = _settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(tmp_path / "no.pem"))
    with pytest.raises(FileNotFoundError):
        kafka_clients.security_options(settings)


def test_no_secret_in_any_repr() -> None:
    settings = _sasl_ssl(DATABASE_URL=f"postgresql://bandit:{SECRET}@db:5432/bandit")
    shown = [
        repr(settings),
        str(settings),
        repr(kafka_clients.security_options(settings)),
        str(kafka_clients.security_options(settings)),
        repr(kafka_clients.faust_credentials(settings)),
        repr(kafka_clients.faust_broker(settings)),
        repr(settings.kafka_sasl_password),
    ]
    for text in shown:
        assert SECRET not in text, text


def test_no_kafka_client_is_built_elsewhere() -> None:
    """Every aiokafka client and faust app goes through streams/kafka_clients.py."""
    direct = re.compile(r"\b(AIOKafkaConsumer|AIOKafkaProducer|AIOKafkaAdminClient)\(")
    offenders = []
    for folder in ("streams", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "kafka_clients.py" or path == Path(__file__):
                continue
            text = path.read_text(encoding="utf-8")
            offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in direct.finditer(text)]
            for match in re.finditer(r"\bfaust\.App\(", text):
                call = text[match.end() : match.end() + 400]
                if "kafka_clients.faust_broker(" not in call:
                    offenders.append(f"{path.relative_to(ROOT)}: faust.App without faust_broker")
    assert not offenders, offenders


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (f"postgresql://bandit:{SECRET}@db:5432/bandit", "postgresql://bandit:***@db:5432/bandit"),
        (f"postgres://u:{SECRET}@x@h/db", "postgres://u:***@h/db"),  # an unencoded @ too
        (f"postgresql://u@h/db?sslmode=require&password={SECRET}",
         "postgresql://u@h/db?sslmode=require&password=***"),
        (f"host=db user=u password={SECRET} dbname=x", "host=db user=u password=*** dbname=x"),
        (f"host=db password='{SECRET} \\' x' dbname=x", "host=db password=*** dbname=x"),
        ("postgresql://postgres@127.0.0.1:15432/bandit",
         "postgresql://postgres@127.0.0.1:15432/bandit"),
    ],
)  # fmt: skip
def test_redact_dsn(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


def _run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BANDIT_", "KAFKA_"))}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


# Nothing listens on port 1. The others have an unencoded character in the password, which
# would move part of it into the port, path or fragment (asyncpg then quotes it in its error).
DSNS = [
    f"postgresql://bandit:{SECRET}@127.0.0.1:1/bandit",
    f"postgresql://bandit:ab#{SECRET}@127.0.0.1:1/bandit",
    f"postgresql://bandit:{SECRET}/x@127.0.0.1:1/bandit",
    f"postgresql://bandit:x?{SECRET}@127.0.0.1:1/bandit",
    f"postgresql://bandit:{SECRET}@127.0.0.1:notaport/bandit",
]


@pytest.mark.parametrize("dsn", DSNS[1:])
def test_a_malformed_database_url_is_refused_without_showing_it(dsn: str) -> None:
    with pytest.raises(ValueError, match="percent-encode") as refused:
        Settings(DATABASE_URL=dsn)
    assert SECRET not in str(refused.value)


def test_a_percent_encoded_password_is_accepted() -> None:
    dsn = "postgresql://bandit:a%23b%2Fc%3Fd%40e@db:5432/bandit"
    assert Settings(DATABASE_URL=dsn).database_dsn == dsn


@pytest.mark.parametrize(("action", "dsn"), [("status", DSNS[0]), *(("migrate", d) for d in DSNS)])
def test_a_database_error_does_not_show_the_password(action: str, dsn: str) -> None:
    done = _run_cli("db", action, DATABASE_URL=dsn)
    assert done.returncode != 0
    assert SECRET not in done.stdout + done.stderr


def test_the_worker_web_server_binds_the_loopback_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """faust binds `web_bind` (0.0.0.0 unless set), not `web_host`: the app must pass it."""
    monkeypatch.delenv("BANDIT_WEB_HOST", raising=False)
    assert Settings().web_host == "127.0.0.1"
    probe = "from streams.app import app; print(app.conf.web_bind, app.conf.web_host)"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BANDIT_", "KAFKA_"))}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=base, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["127.0.0.1", "127.0.0.1"]
