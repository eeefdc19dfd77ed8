"""How a client talks to Kafka: TLS, SASL, or neither (`KafkaSecurity`), for the gateway client and the
reporter, importable without the daemon; the worker builds the same object from its settings.

    security = KafkaSecurity(
        protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        username="gateway", password=os.environ["KAFKA_PASSWORD"], cafile="/etc/aimon/ca.pem",
    )
    GatewayClient("kafka-1:9093", "control", security=security)
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PROTOCOLS: tuple[Protocol, ...] = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS: tuple[Mechanism, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """TLS and SASL options of a Kafka client; the default is PLAINTEXT, as before they existed.

    `cafile` unset trusts the system's CAs; `certfile` (and `keyfile`, unless the key is in the
    certfile) is a client certificate for brokers that ask for one. The broker's host name is always
    checked against its certificate.
    """

    protocol: Protocol = "PLAINTEXT"
    sasl_mechanism: Mechanism = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | Path | None = None
    certfile: str | Path | None = None
    keyfile: str | Path | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}")
        if self.sasl_mechanism not in MECHANISMS:
            raise ValueError(
                f"sasl_mechanism must be one of {', '.join(MECHANISMS)}, not {self.sasl_mechanism!r}"
            )
        if self.sasl and (self.username is None or self.password is None):
            raise ValueError(f"{self.protocol} needs a username and a password")
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("a keyfile needs its certfile")

    @property
    def sasl(self) -> bool:
        """Whether the client authenticates with SASL."""
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        """Whether the connection is encrypted."""
        return self.protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context that verifies the broker against `cafile` (or the system's CAs); None without TLS."""
        if not self.tls:
            return None
        from aiokafka.helpers import create_ssl_context

        context: ssl.SSLContext = create_ssl_context(
            cafile=self.cafile, certfile=self.certfile, keyfile=self.keyfile
        )
        return context

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producers, consumers, admin and plain clients."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.sasl:
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=self.password,
            )
        return options

    def describe(self) -> str:
        """How the client connects, for error messages (never the password)."""
        if self.sasl:
            return f"{self.protocol} as {self.username!r} ({self.sasl_mechanism})"
        return self.protocol


PLAINTEXT = KafkaSecurity()
