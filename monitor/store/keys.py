"""Every Redis key the monitor writes (DESIGN.md, "Redis layout").

All per-model keys carry the `{model_id}` hash tag, so one model's keys share a hash slot: each
atomic step touches one slot and the layout works unchanged on Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

MINUTE = "m"
HOUR = "h"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (tests and tenants use their own prefix)."""

    prefix: str

    def models(self) -> str:
        """Set of every model id seen (cross-slot index, written outside the atomic step)."""
        return f"{self.prefix}:models"

    def model(self, model_id: str) -> str:
        """The common head of one model's keys, with its hash tag."""
        return f"{self.prefix}:{{{model_id}}}"

    def offsets(self, model_id: str) -> str:
        """Hash "<topic>|<partition>" -> last offset applied for this model (the replay guard)."""
        return f"{self.model(model_id)}:offsets"

    def meta(self, model_id: str) -> str:
        """Hash of model facts: last_event_s, events."""
        return f"{self.model(model_id)}:meta"

    def versions(self, model_id: str) -> str:
        """Hash version -> newest event time seen for it."""
        return f"{self.model(model_id)}:versions"

    def bucket(self, model_id: str, version: str, resolution: str, start_s: int) -> str:
        """Hash of additive counters of one version over one minute or hour bucket."""
        return f"{self.model(model_id)}:{resolution}:{version}:{start_s}"


def guard_field(topic: str, partition: int) -> str:
    """The offsets-hash field of one source partition."""
    return f"{topic}|{partition}"
