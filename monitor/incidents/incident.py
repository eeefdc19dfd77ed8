"""The incident record and its transitions (pure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from monitor.events import IncidentEvent
from monitor.rules.evaluate import Finding
from monitor.rules.schema import SEVERITY_RANK, Rule

Status = Literal["open", "acknowledged", "mitigated", "resolved"]
EventKind = Literal["opened", "updated", "acknowledged", "mitigated", "resolved"]


# The public fields live in the base struct and the bookkeeping in the subclass, so one struct
# decides what every API response and the published schema show: adding a field to `Incident`
# keeps it internal, adding it to `IncidentView` publishes it.
class IncidentView(msgspec.Struct, kw_only=True):
    """An incident: what fired, how bad, what was done, and its timeline."""

    id: str
    category: str
    rule: str
    model_id: str
    model_version: str | None
    group: str | None
    severity: str
    level: int
    status: Status = "open"
    opened_at: float
    updated_at: float
    resolved_at: float | None = None
    observation: dict[str, Any] = {}
    scope: dict[str, Any] = {}
    actions: list[dict[str, Any]] = []
    evidence_ref: str | None = None
    timeline: list[dict[str, Any]] = []
    auto_recover: bool = True
    rollback: bool = False
    summary: str = ""
    remediation: list[str] = []
    revoke: list[str] = []  # principals / API keys the gateways should cut off
    rollback_to: str | None = None  # a version named by the incident itself (e.g. the last approved)
    clear_since: float | None = None  # since when the metric has been back inside its threshold


class Incident(IncidentView, kw_only=True):
    """One incident as stored: the public view plus the delivery bookkeeping."""

    notified_at: float = 0.0  # last sent to Alertmanager (refreshed while open)
    reminded_at: float = 0.0  # last sent to the webhooks (again after the re-notify interval)
    outbox: list[str] = []  # events persisted but not yet published (published, then removed)

    def public(self) -> IncidentView:
        """The incident without the bookkeeping fields (what the API returns)."""
        return IncidentView(**_fields(self, IncidentView))

    @property
    def dedup_key(self) -> str:
        """One open incident per (model, rule, group)."""
        return f"{self.rule}|{self.group or ''}"

    @property
    def is_open(self) -> bool:
        """Open, acknowledged or mitigated: anything not resolved holds its escalation level."""
        return self.status != "resolved"

    @property
    def may_auto_recover(self) -> bool:
        """The monitor never lowers a CRITICAL or security incident on its own."""
        return self.auto_recover and self.severity != "CRITICAL" and self.category != "security"

    def note(self, at: float, what: str, **detail: Any) -> None:
        """Append to the timeline."""
        self.timeline.append({"at": at, "what": what, **detail})

    def event(self, kind: str) -> IncidentEvent:
        """The incident as published on the incidents topic: the fields IncidentEvent declares."""
        # `kind` is an EventKind (the outbox holds them as str)
        return IncidentEvent(event=kind, **_fields(self, IncidentEvent))  # type: ignore[arg-type]


def _fields(incident: Incident, shape: type[msgspec.Struct]) -> dict[str, Any]:
    """The incident's values of the fields `shape` declares (the wire or API contract decides, so
    a field is never copied by hand); `event`, the one field an incident does not hold, is left out."""
    return {name: getattr(incident, name) for name in shape.__struct_fields__ if name != "event"}


def new_incident_id(now: float) -> str:
    """A sortable, readable id: INC-<UTC date>-<8 hex>."""
    day = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d")
    return f"INC-{day}-{uuid.uuid4().hex[:8]}"


# The playbook's remediation options for a bias incident.
BIAS_REMEDIATION = [
    "Remove the discriminatory feature (or the proxy) from the model",
    "Retrain with debiasing techniques",
    "Increase human oversight for the affected group",
    "Revert to the previous model version",
    "Retire the system pending redesign",
]


def summarize(rule: Rule, finding: Finding) -> str:
    """One line a person can read: what fired, where, and how far past the threshold."""
    obs = finding.observation
    name = rule.description or rule.id
    where = f"{finding.model_id} {finding.version or ''}".strip()
    if rule.category == "security":
        subject = f"{obs['version']} (sha256 {obs['sha256'][:12]}…)" if "sha256" in obs else str(_who(obs))
        return f"{name}: {subject} on {where}, {obs['value']} in {obs['window_s']}s"
    if rule.category == "bias":
        if obs.get("proxy"):
            stands_for = obs.get("proxy_for") or "a protected characteristic"
            kind = f"possible proxy discrimination (via {obs['attribute']}, may stand in for {stands_for})"
        else:
            kind = "potential discrimination"
        return (
            f"{kind}: {rule.metric.replace('_', ' ')} of {obs['attribute']}={obs['group']} "
            f"on {where} is {obs['value']:.3g} (threshold {obs['threshold']:.3g})"
        )
    value = obs.get("value")
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    since = ""
    if "change_at" in obs:  # a detector's estimate of when it began
        since = f", since {datetime.fromtimestamp(float(obs['change_at']), UTC):%Y-%m-%d %H:%M} UTC"
    return f"{name} on {where}: {rule.metric} {shown} (threshold {obs.get('threshold')}){since}"


def _who(observation: dict[str, Any]) -> Any:
    """The principal (or else the API key) a security finding is about; None for other findings."""
    return observation.get("principal") or observation.get("api_key")


def _revoked(rule: Rule, finding: Finding) -> list[str]:
    if not rule.revoke:
        return []
    who = _who(finding.observation)
    return [str(who)] if who else []


def open_incident(rule: Rule, finding: Finding, now: float) -> Incident:
    """A new incident from a finding that fired."""
    incident = Incident(
        id=new_incident_id(now),
        category=rule.category,
        rule=rule.id,
        model_id=finding.model_id,
        model_version=finding.version,
        group=finding.group,
        severity=finding.severity,
        level=finding.level,
        opened_at=now,
        updated_at=now,
        observation=finding.observation,
        scope={"window_s": rule.window_s, "decisions": finding.observation.get("samples")},
        auto_recover=rule.auto_recover,
        rollback=rule.rollback,
        summary=summarize(rule, finding),
        remediation=list(BIAS_REMEDIATION) if rule.category == "bias" else [],
        revoke=_revoked(rule, finding),
        outbox=["opened"],
    )
    incident.note(now, "opened", severity=finding.severity, level=finding.level, description=rule.description)
    return incident


def refire(incident: Incident, finding: Finding, now: float) -> bool:
    """A finding fired again on an open incident; returns True when severity or level rose."""
    incident.observation = finding.observation
    incident.model_version = finding.version or incident.model_version
    incident.clear_since = None
    incident.updated_at = now
    rose = (SEVERITY_RANK[finding.severity], finding.level) > (
        SEVERITY_RANK[incident.severity],
        incident.level,
    )
    if rose:
        incident.severity, incident.level = finding.severity, finding.level
        incident.note(now, "escalated", severity=finding.severity, level=finding.level)
        incident.outbox.append("updated")
    return rose


class TransitionError(ValueError):
    """A person asked for a status change the incident cannot make."""


ALLOWED_FROM: dict[str, set[str]] = {
    "acknowledge": {"open"},
    "mitigate": {"open", "acknowledged"},
    "resolve": {"open", "acknowledged", "mitigated"},
}
STATUS_AFTER: dict[str, Status] = {
    "acknowledge": "acknowledged",
    "mitigate": "mitigated",
    "resolve": "resolved",
}


def _move(incident: Incident, status: Status, now: float, **detail: Any) -> None:
    """Change the status: noted on the timeline and published as the event of the same name."""
    incident.status = status
    incident.updated_at = now
    if status == "resolved":
        incident.resolved_at = now
    incident.note(now, status, **detail)
    incident.outbox.append(status)


def apply_action(incident: Incident, action: str, who: str, why: str, now: float) -> None:
    """A person acknowledges, mitigates or resolves the incident (with who, when and why)."""
    if incident.status not in ALLOWED_FROM[action]:
        raise TransitionError(f"cannot {action} incident {incident.id}: it is {incident.status}")
    _move(incident, STATUS_AFTER[action], now, by=who, why=why)


def settle(incident: Incident, finding: Finding, hold_s: int, now: float) -> bool:
    """A finding that did not fire; returns True when the incident resolved itself (hysteresis)."""
    if not finding.inside:
        incident.clear_since = None
        return False
    if incident.clear_since is None:
        incident.clear_since = now
    if not incident.may_auto_recover or now - incident.clear_since < hold_s:
        return False
    incident.observation = finding.observation
    _move(incident, "resolved", now, by="monitor", reason=f"inside its threshold for {hold_s}s")
    return True
