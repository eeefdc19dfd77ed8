"""Transport security without services: the settings' checks, the client arguments they become, the
local secure services' configuration."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from monitor.cli import bad_setting
from monitor.clients.security import KafkaSecurity
from monitor.dev import secure
from monitor.dev.certs import TestPki, ensure_pki
from monitor.dev.kafka import render_server_properties
from monitor.dev.service_config import ServiceConfig
from monitor.security import (
    faust_broker_credentials,
    kafka_client_options,
    redact_url,
    redis_options,
)
from monitor.settings import Settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return ensure_pki(tmp_path_factory.mktemp("pki"))


def sasl_ssl(pki: TestPki, **more: Any) -> Settings:
    return Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="monitor",
        kafka_sasl_password="s3cret",
        kafka_ssl_cafile=pki.ca,
        **more,
    )


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    assert kafka_client_options(Settings()) == {"security_protocol": "PLAINTEXT"}
    assert faust_broker_credentials(Settings()) is None
    assert redis_options(Settings()) == {}


def test_sasl_ssl_verifies_the_broker_and_logs_in(pki: TestPki) -> None:
    options = kafka_client_options(sasl_ssl(pki))
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "monitor",
        "sasl_plain_password": "s3cret",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


@pytest.mark.parametrize(
    ("protocol", "mechanism", "credentials_type"),
    [
        ("SASL_SSL", "SCRAM-SHA-512", faust.SASLCredentials),
        ("SASL_SSL", "PLAIN", faust.SASLCredentials),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256", faust.SASLCredentials),
        ("SSL", "SCRAM-SHA-512", faust.SSLCredentials),
    ],
)
def test_faust_gets_the_same_arguments_as_every_other_client(
    pki: TestPki, protocol: str, mechanism: str, credentials_type: type
) -> None:
    given: dict[str, Any] = {"kafka_security_protocol": protocol, "kafka_sasl_mechanism": mechanism}
    if "SASL" in protocol:
        given.update(kafka_sasl_username="monitor", kafka_sasl_password="pw")
    if protocol.endswith("SSL"):
        given["kafka_ssl_cafile"] = pki.ca
    settings = Settings(**given)
    credentials = faust_broker_credentials(settings)
    assert isinstance(credentials, credentials_type)
    # What Faust's own driver hands to aiokafka, against what the monitor's other clients get.
    faust_args = dict(credentials_to_aiokafka_auth(credentials))
    ours = kafka_client_options(settings)
    assert {k: v for k, v in faust_args.items() if v is not None and k != "ssl_context"} == {
        k: v for k, v in ours.items() if k != "ssl_context"
    }
    assert ("ssl_context" in ours) == (faust_args.get("ssl_context") is not None)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "SASL_SSL needs MONITOR_KAFKA_SASL_USERNAME and"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"},
            "needs MONITOR_KAFKA_SASL_USERNAME and MONITOR_KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_sasl_password": "pw"}, "MONITOR_KAFKA_SASL_PASSWORD is set, but"),
        (
            {"kafka_ssl_cafile": "{ca}"},
            "MONITOR_KAFKA_SSL_CAFILE is set, but MONITOR_KAFKA_SECURITY_PROTOCOL",
        ),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/no/such/ca.pem"}, "no such file"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "{ca}"},
            "MONITOR_KAFKA_SSL_KEYFILE is set without MONITOR_KAFKA_SSL_CERTFILE",
        ),
        ({"kafka_security_protocol": "TLS"}, "Input should be"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "Input should be"),
        ({"redis_ssl_ca": "{ca}"}, "MONITOR_REDIS_SSL_CA is set, but MONITOR_REDIS_URL is not a rediss://"),
        (
            {"redis_url": "rediss://:a@127.0.0.1:6380/0", "redis_password": "b"},
            "has a password and MONITOR_REDIS_PASSWORD is set too",
        ),
        ({"redis_username": "monitor"}, "MONITOR_REDIS_USERNAME is set without a password"),
    ],
)
def test_combinations_that_cannot_work_are_refused_in_one_line(
    pki: TestPki, given: dict[str, str], message: str
) -> None:
    values = {k: v.format(ca=pki.ca) for k, v in given.items()}
    with pytest.raises(ValidationError) as refused:
        Settings(**values)  # type: ignore[arg-type]
    line = bad_setting(refused.value)
    assert message in line and "\n" not in line
    assert "MONITOR_?" not in line


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE", "REDIS_PASSWORD"):
        monkeypatch.setenv(f"MONITOR_{name}", "")
    settings = Settings()
    assert settings.kafka_sasl_password is None and settings.kafka_ssl_cafile is None


def test_secrets_survive_to_env_and_are_never_shown(pki: TestPki, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = sasl_ssl(
        pki, redis_url="rediss://127.0.0.1:6380/0", redis_password="r3dis", redis_ssl_ca=pki.ca
    )
    env = settings.to_env()
    assert env["MONITOR_KAFKA_SASL_PASSWORD"] == "s3cret" and env["MONITOR_REDIS_PASSWORD"] == "r3dis"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings
    assert "s3cret" not in repr(settings) and "r3dis" not in repr(settings)
    assert "s3cret" not in repr(KafkaSecurity(protocol="SASL_SSL", username="u", password="s3cret"))


def test_redis_tls_and_acl_user(pki: TestPki) -> None:
    settings = Settings(
        redis_url="rediss://127.0.0.1:6380/0",
        redis_username="monitor",
        redis_password="pw",
        redis_ssl_ca=pki.ca,
        redis_ssl_certfile=pki.client_cert,
        redis_ssl_keyfile=pki.client_key,
    )
    assert redis_options(settings) == {
        "username": "monitor",
        "password": "pw",
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(pki.ca),
        "ssl_certfile": str(pki.client_cert),
        "ssl_keyfile": str(pki.client_key),
    }
    # A password in the URL stays there (redis-py reads it), and is kept out of messages.
    in_url = Settings(redis_url="rediss://monitor:pw@127.0.0.1:6380/0")
    assert redis_options(in_url) == {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    assert redact_url(in_url.redis_url) == "rediss://monitor:***@127.0.0.1:6380/0"
    assert redact_url("redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_kafka_security_refuses_what_cannot_connect() -> None:
    with pytest.raises(ValueError, match="needs a username and a password"):
        KafkaSecurity(protocol="SASL_SSL", username="u")
    with pytest.raises(ValueError, match="protocol must be one of"):
        KafkaSecurity(protocol="TLS")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keyfile needs its certfile"):
        KafkaSecurity(protocol="SSL", keyfile="k.pem")
    assert KafkaSecurity().client_options() == {"security_protocol": "PLAINTEXT"}
    assert KafkaSecurity(protocol="SASL_PLAINTEXT", username="u", password="p").describe() == (
        "SASL_PLAINTEXT as 'u' (SCRAM-SHA-512)"
    )


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_the_plain_broker_is_unchanged_and_the_secure_one_has_one_sasl_ssl_listener(tmp_path: Path) -> None:
    config = ServiceConfig(cache_dir=tmp_path / "c", state_dir=tmp_path / "s", kafka_port=29092)
    plain = _properties(render_server_properties(config))
    assert plain["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:19093"
    assert plain["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert plain["inter.broker.listener.name"] == "PLAINTEXT"
    assert not any(key.startswith(("sasl.", "ssl.")) for key in plain)

    made = secure.ensure(ServiceConfig(cache_dir=tmp_path / "c", state_dir=tmp_path / "s", secure=True))
    props = _properties(render_server_properties(config, made.kafka_properties()))
    assert props["listeners"] == "SASL_SSL://127.0.0.1:29092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:29092"
    assert props["sasl.enabled.mechanisms"] == "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    assert Path(props["ssl.keystore.location"]).read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert made.kafka_password in props["listener.name.sasl_ssl.plain.sasl.jaas.config"]
    assert made.scram_format_args()[1] == f"SCRAM-SHA-256=[name=monitor,password={made.kafka_password}]"
    # Made once: a second call keeps the passwords, and the state dir's files are the owner's only.
    again = secure.ensure(ServiceConfig(cache_dir=tmp_path / "c", state_dir=tmp_path / "s", secure=True))
    assert again.kafka_password == made.kafka_password
    assert {oct(p.stat().st_mode & 0o777) for p in (made.env_file, made.pki.server_key, made.pki.ca_key)} == {
        "0o600"
    }


def test_the_secure_redis_speaks_tls_only_to_one_acl_user(tmp_path: Path) -> None:
    config = ServiceConfig(cache_dir=tmp_path / "c", state_dir=tmp_path / "s", redis_port=26380, secure=True)
    made = secure.ensure(config)
    args = made.redis_args()
    flags = dict(zip(args[0:12:2], args[1:12:2], strict=True))
    assert flags["--port"] == "0" and flags["--tls-port"] == "26380"
    assert flags["--tls-auth-clients"] == "optional"
    assert args[12:] == [
        "--user", "default", "off",
        "--user", "monitor", "on", f">{made.redis_password}", "~*", "&*", "+@all",
    ]  # fmt: skip
    assert config.redis_url == made.redis_url == "rediss://127.0.0.1:26380/0"


def test_the_secure_env_file_is_settings_that_reach_the_secure_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ServiceConfig(
        cache_dir=tmp_path / "c", state_dir=tmp_path / "s", kafka_port=29394, redis_port=26380, secure=True
    )
    made = secure.ensure(config)
    for line in made.env_file.read_text().splitlines():
        name, value = line.split("=", 1)
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert kafka_client_options(settings)["sasl_plain_password"] == made.kafka_password
    assert redis_options(settings)["password"] == made.redis_password
    # The services command reads the same settings as its own secure services, on the same ports.
    again = ServiceConfig.from_settings(settings, {"MONITOR_STATE_DIR": str(tmp_path / "s")})
    assert again.secure and (again.kafka_port, again.redis_port) == (29394, 26380)
    assert again.kafka_remote is None and again.redis_remote is None


def test_a_plain_up_is_refused_while_the_secure_services_run(tmp_path: Path) -> None:
    config = ServiceConfig(cache_dir=tmp_path / "c", state_dir=tmp_path / "s")
    assert not secure.started_secure(config)
    config.kafka_dir.mkdir(parents=True)
    props = config.kafka_dir / "server.properties"
    props.write_text(render_server_properties(config))
    assert not secure.started_secure(config)
    made = secure.ensure(ServiceConfig(cache_dir=tmp_path / "c", state_dir=tmp_path / "s", secure=True))
    props.write_text(render_server_properties(config, made.kafka_properties()))
    assert secure.started_secure(config)
