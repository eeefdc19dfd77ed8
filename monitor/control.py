"""Escalation levels and the control messages gateways act on (docs/events.md, "ControlMessage")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from monitor.events import ControlMessage, IncidentEvent

Mode = Literal["auto", "human_review", "paused"]


@dataclass(frozen=True)
class LevelPolicy:
    """How a gateway routes at one escalation level."""

    name: str
    mode: Mode
    review_sampling_rate: float
    review_below_confidence: float | None


# The playbook's escalation ladder. Sampling rates sit inside the playbook's ranges
# (level 0: 1–5 %, level 1: 10–20 %); level 2 sends everything under 0.80 confidence to people.
LEVELS: dict[int, LevelPolicy] = {
    0: LevelPolicy("normal", "auto", 0.02, None),
    1: LevelPolicy("increased monitoring", "auto", 0.15, None),
    2: LevelPolicy("high confidence required", "human_review", 0.15, 0.80),
    3: LevelPolicy("near-total oversight", "human_review", 1.0, None),
    4: LevelPolicy("paused", "paused", 1.0, None),
}


@dataclass(frozen=True)
class Cause:
    """One open incident that asks for a level."""

    incident_id: str
    rule: str
    severity: str
    level: int
    version: str | None
    rollback: bool
    revoke: tuple[str, ...] = ()
    rollback_to: str | None = None  # named by the incident itself (integrity: the last approved version)


@dataclass
class ControlState:
    """A model's escalation state."""

    seq: int = 0
    level: int = 0
    override: int | None = None
    pending: ControlMessage | None = None  # the outbox: written, not yet acknowledged by Kafka
    last: ControlMessage | None = None  # the last message acknowledged by Kafka


def target_level(causes: Sequence[Cause], override: int | None) -> int:
    """The maximum asked by the open incidents and any manual override."""
    asked = [cause.level for cause in causes]
    if override is not None:
        asked.append(override)
    return max(asked, default=0)


def build_message(
    model_id: str,
    seq: int,
    level: int,
    causes: Sequence[Cause],
    *,
    override: int | None,
    rollback_to: str | None,
    revoke_principals: Sequence[str] = (),
    issued_by: str = "monitor",
    issued_at: float,
) -> ControlMessage:
    """The control message for a model at `level`, with a reason a person can read."""
    policy = LEVELS[level]
    driving = sorted(causes, key=lambda c: -c.level)
    if driving:
        reason = f"level {level} ({policy.name}): " + "; ".join(
            f"{c.rule} {c.severity}" + (f" on {c.version}" if c.version else "") + f" ({c.incident_id})"
            for c in driving
        )
    elif override is not None:
        reason = f"level {level} ({policy.name}): manual override"
    else:
        reason = f"level {level} ({policy.name}): no open incident"
    return ControlMessage(
        model_id=model_id,
        seq=seq,
        level=level,
        mode=policy.mode,
        review_sampling_rate=policy.review_sampling_rate,
        review_below_confidence=policy.review_below_confidence,
        rollback_to=rollback_to,
        revoke_principals=sorted(set(revoke_principals)),
        reason=reason,
        incident_ids=[c.incident_id for c in driving],
        issued_by=issued_by,
        issued_at=issued_at,
    )


class Publisher(Protocol):
    """Where control messages and incident events go (the Kafka topics)."""

    async def control(self, message: ControlMessage) -> None:
        """Publish on the compacted control topic, key = model_id; returns once acknowledged."""

    async def incident(self, event: IncidentEvent) -> None:
        """Publish on the incidents topic, key = incident id; returns once acknowledged."""
