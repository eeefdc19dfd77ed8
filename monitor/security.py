"""The one place that turns the transport-security settings into client arguments: every Kafka client
(Faust, aiokafka producers, consumers, admin) and every Redis client of the monitor is built from here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.asyncio import Redis

from monitor.clients.security import KafkaSecurity
from monitor.settings import Settings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

__all__ = [
    "faust_broker_credentials",
    "kafka_client_options",
    "kafka_security",
    "redact_url",
    "redis_client",
    "redis_options",
    "sync_redis_client",
]


def kafka_security(settings: Settings) -> KafkaSecurity:
    """The settings' Kafka TLS and SASL options."""
    password = settings.kafka_sasl_password
    return KafkaSecurity(
        protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism,
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password is not None else None,
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
    )


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of aiokafka's producers, consumers, admin and plain clients for these settings."""
    return kafka_security(settings).client_options()


def faust_broker_credentials(settings: Settings) -> CredentialsT | None:
    """The Faust app's `broker_credentials`; None for PLAINTEXT.

    faust-streaming maps SASLCredentials to aiokafka's sasl_* arguments with the mechanism as given
    (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 all pass through) and to SASL_SSL when it has a TLS
    context; SSLCredentials is TLS alone.
    """
    import faust  # here, not at import: the CLI's commands that need no worker stay quick to start

    security = kafka_security(settings)
    context = security.ssl_context()
    if security.sasl:
        return faust.SASLCredentials(
            username=security.username,
            password=security.password,
            ssl_context=context,
            mechanism=security.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def redis_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of `Redis.from_url(settings.redis_url, ...)`: AUTH / ACL user and TLS files.

    A user or password in the URL is used as it is (redis-py reads it there); the TLS options go
    only with a rediss:// URL, whose certificate is always verified, host name included.
    """
    options: dict[str, Any] = {}
    if settings.redis_username is not None:
        options["username"] = settings.redis_username
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    if urlsplit(settings.redis_url).scheme == "rediss":
        options.update(ssl_cert_reqs="required", ssl_check_hostname=True)
        for option, value in (
            ("ssl_ca_certs", settings.redis_ssl_ca),
            ("ssl_certfile", settings.redis_ssl_certfile),
            ("ssl_keyfile", settings.redis_ssl_keyfile),
        ):
            if value is not None:
                options[option] = str(value)
    return options


def redis_client(settings: Settings, **options: Any) -> Redis:
    """An asyncio Redis client for the settings; `options` (timeouts, say) are added."""
    return Redis.from_url(settings.redis_url, **redis_options(settings), **options)


def sync_redis_client(settings: Settings, **options: Any) -> redis.Redis:
    """A blocking Redis client for the settings (the local services' probes)."""
    return redis.Redis.from_url(settings.redis_url, **redis_options(settings), **options)


def redact_url(url: str) -> str:
    """`url` with its password replaced by `***`, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
