"""The local services with transport security (`monitor services up --secure`): a Kafka broker whose one
client listener is SASL_SSL (SASL PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512, users made at format time)
and a Redis that speaks TLS only and knows one ACL user, with certificates and passwords generated into
the state dir (`secure/`), never committed. `secure/secure.env` holds the MONITOR_* settings that reach
them."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.clients.security import KafkaSecurity
from monitor.dev.certs import TestPki, ensure_pki
from monitor.dev.service_config import ServiceConfig

__all__ = ["BROKER_USER", "KAFKA_USER", "REDIS_USER", "SecureServices", "ensure", "load", "started_secure"]

KAFKA_USER = "monitor"
BROKER_USER = "broker"  # the broker's own user on its listener (inter-broker requests)
REDIS_USER = "monitor"
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class SecureServices:
    """The certificates and passwords of the local secure services."""

    config: ServiceConfig
    pki: TestPki
    kafka_password: str
    broker_password: str
    redis_password: str

    @property
    def kafka_security(self) -> KafkaSecurity:
        """How a client reaches the broker: SASL_SSL with SCRAM-SHA-512 as `monitor`, trusting the test CA."""
        return KafkaSecurity(
            protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            username=KAFKA_USER,
            password=self.kafka_password,
            cafile=self.pki.ca,
        )

    @property
    def redis_url(self) -> str:
        c = self.config
        return f"rediss://127.0.0.1:{c.redis_port}/{c.redis_db}"

    def redis_options(self) -> dict[str, Any]:
        """redis-py arguments besides the URL: the ACL user and the CA to trust."""
        return {
            "username": REDIS_USER,
            "password": self.redis_password,
            "ssl_ca_certs": str(self.pki.ca),
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
        }

    def settings_env(self) -> dict[str, str]:
        """The MONITOR_* environment of a worker (or CLI) that uses these services."""
        return {
            "MONITOR_KAFKA_BOOTSTRAP": self.config.kafka_bootstrap,
            "MONITOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "MONITOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "MONITOR_KAFKA_SASL_USERNAME": KAFKA_USER,
            "MONITOR_KAFKA_SASL_PASSWORD": self.kafka_password,
            "MONITOR_KAFKA_SSL_CAFILE": str(self.pki.ca),
            "MONITOR_REDIS_URL": self.redis_url,
            "MONITOR_REDIS_USERNAME": REDIS_USER,
            "MONITOR_REDIS_PASSWORD": self.redis_password,
            "MONITOR_REDIS_SSL_CA": str(self.pki.ca),
        }

    @property
    def env_file(self) -> Path:
        return _dir(self.config) / "secure.env"

    def kafka_properties(self) -> str:
        """The broker's security lines of server.properties (the listener is SASL_SSL)."""
        users = f'user_{BROKER_USER}="{self.broker_password}" user_{KAFKA_USER}="{self.kafka_password}"'
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{BROKER_USER}" password="{self.broker_password}" {users};'
        )
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        lines = [
            f"sasl.enabled.mechanisms={','.join(MECHANISMS)}",
            "sasl.mechanism.inter.broker.protocol=PLAIN",
            f"listener.name.sasl_ssl.plain.sasl.jaas.config={plain}",
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.pki.server_keystore}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.pki.ca}",
            # A client certificate is checked if one is shown, not required: SASL names the user.
            "ssl.client.auth=requested",
        ]
        return "\n".join(lines) + "\n"

    def scram_format_args(self) -> list[str]:
        """`kafka-storage format` arguments that store the SCRAM credentials of the client user."""
        args = []
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            args += ["--add-scram", f"{mechanism}=[name={KAFKA_USER},password={self.kafka_password}]"]
        return args

    def redis_args(self) -> list[str]:
        """redis-server arguments: TLS only on the configured port, the default user off, one ACL user."""
        p = self.pki
        return [
            "--port", "0",
            "--tls-port", str(self.config.redis_port),
            "--tls-cert-file", str(p.server_cert),
            "--tls-key-file", str(p.server_key),
            "--tls-ca-cert-file", str(p.ca),
            "--tls-auth-clients", "optional",
            "--user", "default", "off",
            "--user", REDIS_USER, "on", f">{self.redis_password}", "~*", "&*", "+@all",
        ]  # fmt: skip


def _dir(config: ServiceConfig) -> Path:
    return config.state_dir.absolute() / "secure"


def started_secure(config: ServiceConfig) -> bool:
    """Whether the broker of this state dir was last started with `--secure` (its listener is SASL_SSL)."""
    props = config.kafka_dir / "server.properties"
    return props.exists() and "\nlisteners=SASL_SSL://" in props.read_text(encoding="utf-8")


def load(config: ServiceConfig) -> SecureServices | None:
    """The secure services' material of this state dir, if it has been made."""
    found = _dir(config) / "credentials.json"
    if not found.exists():
        return None
    saved = json.loads(found.read_text(encoding="utf-8"))
    return SecureServices(config, TestPki(_dir(config) / "tls"), **saved)


def ensure(config: ServiceConfig) -> SecureServices:
    """The certificates and passwords of this state dir, made on first use; writes secure.env."""
    folder = _dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    pki = ensure_pki(folder / "tls")
    made = load(config)
    if made is None:
        saved = {
            name: secrets.token_urlsafe(24)
            for name in ("kafka_password", "broker_password", "redis_password")
        }
        path = folder / "credentials.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(saved), encoding="utf-8")
        made = SecureServices(config, pki, **saved)
    env = "".join(f"{name}={value}\n" for name, value in made.settings_env().items())
    made.env_file.touch(mode=0o600)
    made.env_file.write_text(env, encoding="utf-8")
    return made
