"""Where the local Kafka broker and Redis listen and keep their files, derived from the Settings.

One address per service: the local services listen where the worker dials, on the ports of
`MONITOR_KAFKA_BOOTSTRAP` and `MONITOR_REDIS_URL`. A non-loopback address is remote: used if it
answers, never started here (monitor/dev/services.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from monitor.exceptions import ServicesError
from monitor.security import kafka_client_options, redis_options
from monitor.settings import Settings

__all__ = ["LOOPBACK", "ServiceConfig"]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _port(name: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ServicesError(f"{name} must be a port number from 1 to 65535, not {value!r}")
    return int(value)


def _local_port(name: str, value: str, default_port: int | None) -> int | None:
    """The port of `value` (setting `name`) if it is one loopback address, else None (a remote one)."""
    try:
        where = urlsplit(value if "://" in value else f"//{value}")
        host, port = where.hostname, where.port
    except ValueError:  # not one host:port, e.g. a list of brokers
        return None
    if "," in value or host not in LOOPBACK or where.username or where.password:
        return None
    if port is None:
        if default_port is None:
            raise ServicesError(f"{name}={value} has no port; give one, e.g. {name}=127.0.0.1:19092")
        return default_port
    return port


def _agree(legacy: str, setting: str, value: str, port: int | None, env: Mapping[str, str]) -> None:
    """Refuse a still-set MONITOR_*_PORT that disagrees with the address the worker dials."""
    given = env.get(legacy, "")
    if given and _port(legacy, given) != port:
        example = (
            f"127.0.0.1:{given}" if setting == "MONITOR_KAFKA_BOOTSTRAP" else f"redis://127.0.0.1:{given}/0"
        )
        raise ServicesError(
            f"{legacy}={given} disagrees with {setting}={value}: the local service listens "
            f"where the worker dials, so set {setting}={example} and unset {legacy}"
        )


@dataclass(frozen=True)
class ServiceConfig:
    """Where the local services keep their files and which ports they listen on."""

    cache_dir: Path
    state_dir: Path
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    redis_port: int = 16379
    redis_db: int = 0
    # The worker's address when it is no single loopback address: used if it answers, never started.
    kafka_remote: str | None = None
    redis_remote: str | None = None
    kafka_version: str = "4.4.0"
    kafka_heap: str = "512m"
    # SASL_SSL broker and TLS Redis with an ACL user, their certificates and passwords made in the state
    # dir (monitor/dev/secure.py): `monitor services up --secure`, or settings that ask for TLS.
    secure: bool = False
    # How the probes reach services that are not started here: the settings' TLS and credentials.
    kafka_options: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    redis_options: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_settings(
        cls, settings: Settings, env: Mapping[str, str] | None = None, *, secure: bool = False
    ) -> ServiceConfig:
        """The config whose services answer at `settings.kafka_bootstrap` and `settings.redis_url`.

        Files go to `MONITOR_CACHE_DIR` / `MONITOR_STATE_DIR`; the controller listens on
        `MONITOR_KAFKA_CONTROLLER_PORT`, else the broker's port + 1. `MONITOR_KAFKA_PORT` and
        `MONITOR_REDIS_PORT` are no longer needed; one still set must agree with the address. The
        services are the secure ones if `secure`, or if the settings use SASL_SSL or rediss://.
        """
        env = os.environ if env is None else env
        cache = env.get("MONITOR_CACHE_DIR") or "~/.cache/aimon"
        state = env.get("MONITOR_STATE_DIR") or "~/.local/state/aimon"
        bootstrap, url = settings.kafka_bootstrap, settings.redis_url
        kafka_port = _local_port("MONITOR_KAFKA_BOOTSTRAP", bootstrap, None)
        local_scheme = url.startswith(("redis://", "rediss://"))
        redis_port = _local_port("MONITOR_REDIS_URL", url, 6379) if local_scheme else None
        _agree("MONITOR_KAFKA_PORT", "MONITOR_KAFKA_BOOTSTRAP", bootstrap, kafka_port, env)
        _agree("MONITOR_REDIS_PORT", "MONITOR_REDIS_URL", url, redis_port, env)
        controller = env.get("MONITOR_KAFKA_CONTROLLER_PORT", "")
        remote_kafka, remote_redis = kafka_port is None, redis_port is None
        # A remote service has no local port; these then only name what `status` looks at.
        kafka_port = kafka_port or cls.kafka_port
        if controller:
            controller_port = _port("MONITOR_KAFKA_CONTROLLER_PORT", controller)
        elif kafka_port < 65535:
            controller_port = kafka_port + 1
        else:
            raise ServicesError(
                "the broker is on port 65535, so the controller cannot take the next one; "
                "set MONITOR_KAFKA_CONTROLLER_PORT"
            )
        if controller_port == kafka_port:
            raise ServicesError(
                f"MONITOR_KAFKA_CONTROLLER_PORT={controller} is the broker's own port "
                f"(MONITOR_KAFKA_BOOTSTRAP={bootstrap}); choose another"
            )
        db = urlsplit(url).path.strip("/")
        return cls(
            # Absolute, because the services run with their own working directories.
            cache_dir=Path(cache).expanduser().absolute(),
            state_dir=Path(state).expanduser().absolute(),
            kafka_port=kafka_port,
            kafka_controller_port=controller_port,
            redis_port=redis_port or cls.redis_port,
            redis_db=int(db) if db.isdigit() else 0,
            kafka_remote=bootstrap if remote_kafka else None,
            redis_remote=url if remote_redis else None,
            secure=secure or settings.kafka_security_protocol == "SASL_SSL" or url.startswith("rediss://"),
            kafka_options=kafka_client_options(settings),
            redis_options=redis_options(settings),
        )

    @classmethod
    def from_env(cls) -> ServiceConfig:
        """The config of the `MONITOR_*` environment (see from_settings)."""
        return cls.from_settings(Settings())

    @property
    def kafka_bootstrap(self) -> str:
        """Bootstrap address of the local broker."""
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        """URL of the local Redis server."""
        scheme = "rediss" if self.secure else "redis"
        return f"{scheme}://127.0.0.1:{self.redis_port}/{self.redis_db}"

    @property
    def kafka_dir(self) -> Path:
        """The broker's data dir, rendered configs, pid file and log."""
        return self.state_dir.absolute() / "kafka"

    @property
    def redis_dir(self) -> Path:
        """The Redis server's working dir, pid file and log."""
        return self.state_dir.absolute() / "redis"
