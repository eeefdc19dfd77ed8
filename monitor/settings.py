"""The one settings object: built once at start from `MONITOR_*` env and CLI flags, then passed down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Topics(BaseSettings):
    """Kafka topic names (docs/settings.md, "Topics"); each is `MONITOR_TOPIC_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="MONITOR_TOPIC_", frozen=True, extra="forbid")

    predictions: str = "predictions"
    labels: str = "labels"
    access_logs: str = "access-logs"
    model_registry: str = "model-registry"
    control: str = "control"
    incidents: str = "incidents"
    dead_letters: str = "dead-letters"
    audit: str = "audit"


_SECURITY_FILES = (
    "kafka_ssl_cafile",
    "kafka_ssl_certfile",
    "kafka_ssl_keyfile",
    "redis_ssl_ca",
    "redis_ssl_certfile",
    "redis_ssl_keyfile",
)
_OPTIONAL_SECURITY_FIELDS = (
    *_SECURITY_FILES,
    "kafka_sasl_username",
    "kafka_sasl_password",
    "redis_username",
    "redis_password",
)


class Settings(BaseSettings):
    """Everything the daemon can be told, with the defaults of a local single-node setup."""

    model_config = SettingsConfigDict(env_prefix="MONITOR_", frozen=True, extra="forbid")

    kafka_bootstrap: str = "127.0.0.1:19092"
    redis_url: str = "redis://127.0.0.1:16379/0"
    app_id: str = Field("aimon", description="Faust app id; also the Kafka consumer group.")
    key_prefix: str = Field("aimon", description="Prefix of every Redis key this daemon writes.")
    topics: Topics = Field(default_factory=Topics)
    partitions: int = Field(8, ge=1, description="Partitions of the input topics when created.")
    replication_factor: int = Field(1, ge=1)

    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=0, le=65535)

    rules_path: Path | None = Field(
        None, description="Rules file or directory; unset, the default rules packaged with the monitor."
    )
    evidence_dir: Path = Path("evidence")
    eval_interval_s: float = Field(1.0, gt=0)
    window_refresh_s: float = Field(
        60.0,
        gt=0,
        description="How often each version's windows are re-read in a fleet of 32 versions or more "
        "(baselines, groups, the windowed rules, the window gauges); a smaller fleet's every tick.",
    )
    detector_save_s: float = Field(
        10.0,
        gt=0,
        description="How often the detectors' state is written to Redis (a restart resumes from it).",
    )
    api_token: SecretStr | None = None
    alertmanager_url: str | None = Field(None, description="e.g. http://alertmanager:9093")
    renotify_s: float = Field(4 * 3600, gt=0, description="Remind the webhooks of incidents left open.")
    webhook_urls: list[str] = Field(default_factory=list, description="JSON list of URLs")
    public_url: str | None = Field(
        None,
        description="Where people reach this worker's API (alerts link to {public_url}/incidents/{id}); "
        "default http://{web_host}:{web_port}.",
    )
    metrics_max_groups: int = Field(
        20,
        ge=1,
        description="Groups per (model, version, attribute, window) exported by name; the rest are `_other`.",
    )
    incident_contact: str = Field(
        "the on-call incident commander", description="Who the notifications name for questions."
    )

    kafka_session_timeout_s: float = Field(
        30.0, ge=6, description="How long a silent worker keeps its partitions before a rebalance."
    )
    batch_max_events: int = Field(1000, ge=1, description="Messages an agent takes per batch.")
    batch_within_s: float = Field(
        0.1, gt=0, description="Longest wait to fill a batch (adds to detection latency)."
    )
    max_value_bytes: int = Field(
        1_048_576, ge=1024, description="Larger message values are dead-lettered as too_large."
    )
    # Minute buckets serve windows of up to 1 h; the rest is slack for late events and a paused
    # evaluator. (26 h before 2026-11-27: 1,560 buckets per version, most never read again.)
    minute_bucket_ttl_s: int = Field(3 * 3600, ge=3600)
    hour_bucket_ttl_s: int = Field(15 * 24 * 3600, ge=24 * 3600)
    redis_retry_max_s: float = Field(5.0, gt=0, description="Cap of the backoff while Redis is down.")
    # The catch-up hold (monitor/rules/catchup.py): silence rules are judged only while every
    # predictions partition is reported caught up, or behind by less than this.
    caught_up_within_s: float = Field(
        60.0, ge=0, description="A consumer lag under this counts as caught up for silence rules."
    )
    lag_report_stale_s: float = Field(
        10.0, gt=1, description="A partition's progress report older than this counts as behind."
    )
    # API principals, roles and limits (monitor/auth.py, monitor/api.py; docs/api.md "Authentication").
    api_tokens_file: Path | None = Field(
        None, description="YAML file of {principal, role, sha256} tokens; re-read when it changes."
    )
    api_tokens: str | None = Field(None, description="JSON list of {principal, role, sha256} tokens.")
    api_open_reads: bool | None = Field(
        None,
        description="Whether GETs need no token; unset: open unless MONITOR_API_TOKENS(_FILE) is set.",
    )
    api_max_body_bytes: int = Field(
        65_536, ge=1024, description="Larger request bodies are refused with 413."
    )
    cli_token: SecretStr | None = Field(
        None, description="The bearer token the CLI sends; unset: MONITOR_API_TOKEN (deprecated)."
    )
    # ---- Transport security (docs/settings.md, "Transport security"): TLS and SASL to Kafka, TLS and
    # AUTH/ACL to Redis. monitor/security.py turns these into the clients' arguments.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="Used with SASL_SSL / SASL_PLAINTEXT only."
    )
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(
        None, description="CA of the brokers' certificates; unset: the system's."
    )
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (mutual TLS), PEM.")
    kafka_ssl_keyfile: Path | None = Field(None, description="Its private key, unless in the certfile.")
    redis_username: str | None = Field(None, description="ACL user; or in the URL, rediss://user:pass@host.")
    redis_password: SecretStr | None = None
    redis_ssl_ca: Path | None = Field(None, description="CA of the Redis certificate (rediss:// only).")
    redis_ssl_certfile: Path | None = None
    redis_ssl_keyfile: Path | None = None
    # Audit trail (monitor/audit/, docs/audit.md): entries sealed with HMAC-SHA256 under this secret.
    audit_secret: SecretStr | None = Field(
        None,
        description="The key of the audit chain, the same on every worker and wherever "
        "`monitor audit verify` runs; unset (and no MONITOR_AUDIT_SECRET_FILE): a secret generated once in "
        "$MONITOR_STATE_DIR/audit.key, right for one host only.",
    )
    audit_secret_file: Path | None = Field(
        None, description="A file holding the audit secret (e.g. a mounted secret); refused if unreadable."
    )

    @field_validator("audit_secret_file", mode="before")
    @classmethod
    def _audit_secret_file_unset(cls, value: object) -> object:
        return None if value == "" else value  # as for MONITOR_RULES_PATH: empty means unset

    log_level: str = "info"

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with CLI flags applied; flags left as None keep the env/default value."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            return self
        return type(self).model_validate({**self.model_dump(), **given})

    @field_validator("rules_path", mode="before")
    @classmethod
    def _rules_path_unset(cls, value: object) -> object:
        # `MONITOR_RULES_PATH=` (empty) means unset, not the working directory (Path("") is ".").
        return None if value == "" else value

    @field_validator("api_tokens_file", "api_tokens", "api_open_reads", "cli_token", mode="before")
    @classmethod
    def _empty_unset(cls, value: object) -> object:
        # An empty variable (a compose file's `${VAR:-}`) means unset.
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://, e.g. redis://127.0.0.1:6379/0")
        return value

    @field_validator(*_OPTIONAL_SECURITY_FIELDS, mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator(*_SECURITY_FILES)
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _security_combinations(self) -> Settings:
        problem = security_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    def to_env(self) -> dict[str, str]:
        """The MONITOR_* environment that rebuilds these settings in another process."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(exclude={"topics"}).items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            else:
                text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            env[f"MONITOR_{name.upper()}"] = text
        for name, value in self.topics.model_dump().items():
            env[f"MONITOR_TOPIC_{name.upper()}"] = str(value)
        return env

    @property
    def web_url(self) -> str:
        """Where this worker's web server listens: the API, /metrics, /healthz, /readyz."""
        return f"http://{self.web_host}:{self.web_port}"

    @property
    def api_url(self) -> str:
        """The API's public base URL, without a trailing slash."""
        return (self.public_url or self.web_url).rstrip("/")

    @property
    def retention_s(self) -> int:
        """How far back an event may be and still land in a bucket that has not expired."""
        return self.hour_bucket_ttl_s


def security_problem(s: Settings) -> str | None:
    """What is wrong with the transport-security settings taken together, naming the variables; or None."""
    protocol = s.kafka_security_protocol
    tls_files = [n for n in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile") if getattr(s, n)]
    sasl = [n for n in ("kafka_sasl_username", "kafka_sasl_password") if getattr(s, n) is not None]
    if protocol.startswith("SASL_"):
        if len(sasl) < 2:
            return (
                f"MONITOR_KAFKA_SECURITY_PROTOCOL={protocol} needs MONITOR_KAFKA_SASL_USERNAME and "
                "MONITOR_KAFKA_SASL_PASSWORD"
            )
    elif sasl:
        return f"{_var(sasl[0])} is set, but MONITOR_KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL"
    if protocol not in ("SSL", "SASL_SSL") and tls_files:
        return (
            f"{_var(tls_files[0])} is set, but MONITOR_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS "
            "(SSL or SASL_SSL do)"
        )
    if s.kafka_ssl_keyfile and not s.kafka_ssl_certfile:
        return "MONITOR_KAFKA_SSL_KEYFILE is set without MONITOR_KAFKA_SSL_CERTFILE"
    url = urlsplit(s.redis_url)
    redis_tls = [n for n in ("redis_ssl_ca", "redis_ssl_certfile", "redis_ssl_keyfile") if getattr(s, n)]
    if redis_tls and url.scheme != "rediss":
        return f"{_var(redis_tls[0])} is set, but MONITOR_REDIS_URL is not a rediss:// URL (TLS)"
    if s.redis_ssl_keyfile and not s.redis_ssl_certfile:
        return "MONITOR_REDIS_SSL_KEYFILE is set without MONITOR_REDIS_SSL_CERTFILE"
    if url.password and s.redis_password is not None:
        return "MONITOR_REDIS_URL has a password and MONITOR_REDIS_PASSWORD is set too: give it once"
    if url.username and s.redis_username is not None:
        return "MONITOR_REDIS_URL has a user name and MONITOR_REDIS_USERNAME is set too: give it once"
    if s.redis_username is not None and s.redis_password is None and not url.password:
        return "MONITOR_REDIS_USERNAME is set without a password (MONITOR_REDIS_PASSWORD)"
    return None


def _var(field: str) -> str:
    return f"MONITOR_{field.upper()}"
