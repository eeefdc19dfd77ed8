"""The monitor's exception hierarchy: one root, one class per failure."""

from __future__ import annotations


class MonitorError(Exception):
    """Root of every error the monitor raises on purpose."""


class ConfigError(MonitorError):
    """The configuration or a rules file is wrong; the message says where and how to fix it."""


class ServicesError(MonitorError):
    """A local service (Kafka broker, Redis) could not be fetched, started or reached."""


class DecodeError(MonitorError):
    """A message value is not a valid event; `reason` is the dead-letter reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StoreError(MonitorError):
    """Redis refused or lost a write that must be retried."""


class OffsetConflict(StoreError):
    """A model's share overlaps offsets already applied by an earlier (replayed) batch."""
