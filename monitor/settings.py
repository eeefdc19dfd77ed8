"""The one settings object: built once at start from `MONITOR_*` env and CLI flags, then passed down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
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

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://, e.g. redis://127.0.0.1:6379/0")
        return value

    def to_env(self) -> dict[str, str]:
        """The MONITOR_* environment that rebuilds these settings in another process."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(exclude={"topics", "api_token", "audit_secret"}).items():
            if value is None:
                continue
            text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            env[f"MONITOR_{name.upper()}"] = text
        for name, value in self.topics.model_dump().items():
            env[f"MONITOR_TOPIC_{name.upper()}"] = str(value)
        if self.api_token is not None:
            env["MONITOR_API_TOKEN"] = self.api_token.get_secret_value()
        if self.audit_secret is not None:
            env["MONITOR_AUDIT_SECRET"] = self.audit_secret.get_secret_value()
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
