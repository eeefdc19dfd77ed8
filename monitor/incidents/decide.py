"""The decisions of one evaluator tick, pure: values in, values out, no Redis, no store, no I/O.

The evaluator reads (windows, open incidents, control state, quiet periods, commands), calls these
functions, then saves and publishes what they return. In the order a tick applies them:

- `command`: a person's command (acknowledge, mitigate, resolve, escalate, release);
- `control_false_discoveries`: Benjamini–Hochberg over each `fdr` rule's family of tests;
- `incident_transitions`: merge, inhibition, quiet periods, then open / update / refire / settle /
  resolve per incident;
- `renotify`: which open incidents Alertmanager and the webhooks hear about again;
- `control`: the model's level (max of its open incidents and any override), the version to roll
  back to, the principals to revoke, and the control message when any of them changed.

Transitions change the incidents they are given in place (the transitions of `incident.py`) and
return them, so the caller saves exactly what changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from monitor.aggregates.window import WindowStats
from monitor.control import Cause, ControlState, build_message, target_level
from monitor.events import ControlMessage
from monitor.incidents.incident import Incident, TransitionError, apply_action, open_incident, refire, settle
from monitor.rules.evaluate import Finding
from monitor.rules.schema import SEVERITY_RANK, Rule
from monitor.stats import benjamini_hochberg

# Alertmanager resolves an alert nobody re-sends within its resolve_timeout (5 min by default).
ALERT_REFRESH_S = 60.0
# For this long after a superseded version's reference is first frozen it may still grow: the
# successor can show up before all of the predecessor's history (and its late labels) is in.
REFREEZE_S = 3600.0

TransitionKind = Literal["open", "update", "refire", "settle", "resolve"]


@dataclass(frozen=True)
class Transition:
    """What one tick does to one incident.

    open: a finding fired and no incident was open for its key (an "opened" event);
    update: it fired again with a higher severity or level (an "updated" event);
    refire: it fired again, no higher (the incident is refreshed and saved, nothing is published);
    settle: it did not fire, the incident stays open (the hold period starts, runs or restarts);
    resolve: it has been inside its threshold for the rule's hold period (a "resolved" event).
    """

    kind: TransitionKind
    incident: Incident
    rule: Rule
    finding: Finding


@dataclass
class IncidentDecisions:
    """One model's transitions in rule order, and its incidents still open after them."""

    transitions: list[Transition] = field(default_factory=list)
    live: list[Incident] = field(default_factory=list)

    def of(self, *kinds: TransitionKind) -> list[Incident]:
        """The incidents whose transition is one of `kinds`, in rule order."""
        return [t.incident for t in self.transitions if t.kind in kinds]

    @property
    def changed(self) -> list[Incident]:
        """Every incident a transition touched (all of them are saved)."""
        return [t.incident for t in self.transitions]


def worse(a: Finding, b: Finding) -> bool:
    """Of two findings for the same incident, `a` is kept when it fired and `b` did not, else when it
    has the higher severity, then the higher level."""
    return (a.fired, SEVERITY_RANK[a.severity], a.level) > (b.fired, SEVERITY_RANK[b.severity], b.level)


def merge_findings(findings: Iterable[Finding]) -> dict[str, Finding]:
    """One finding per incident key (rule and group): of several versions' findings, the worst."""
    merged: dict[str, Finding] = {}
    for finding in findings:
        kept = merged.get(finding.dedup_key)
        if kept is None or worse(finding, kept):
            merged[finding.dedup_key] = finding
    return merged


def inhibited(rule: Rule, open_rules: set[str]) -> bool:
    """A rule is not judged while an incident of a rule it names in `inhibited_by` is open (say,
    no accuracy incident for a model that is down)."""
    return bool(set(rule.inhibited_by) & open_rules)


def quiet(key: str, quiet_until: Mapping[str, float], now: float) -> bool:
    """A key a person resolved stays closed until its quiet period ends: its window still holds
    the data they judged."""
    return quiet_until.get(key, 0.0) > now


def incident_transitions(
    rules: Sequence[Rule],
    findings: Mapping[str, Sequence[Finding]],
    incidents: Sequence[Incident],
    quiet_until: Mapping[str, float],
    now: float,
) -> IncidentDecisions:
    """One model's transitions from its findings (rule id -> findings) and its open incidents.

    Rules are judged in file order, so an incident opened now inhibits the rules after it. Per
    incident key the worst finding counts; with no incident open, a quiet key is skipped and a
    finding that fired opens one; with one open, a finding that fired refires it (an update when
    severity or level rose) and one that did not settles it (resolved after the rule's hold, unless
    the incident may not auto-recover: CRITICAL, security, or `auto_recover: false`)."""
    by_key = {i.dedup_key: i for i in incidents}
    open_rules = {i.rule for i in incidents}
    decisions = IncidentDecisions()
    for rule in rules:
        if inhibited(rule, open_rules):
            continue
        for key, finding in merge_findings(findings.get(rule.id, ())).items():
            incident = by_key.get(key)
            kind: TransitionKind
            if incident is None:
                if not finding.fired or quiet(key, quiet_until, now):
                    continue
                incident = open_incident(rule, finding, now)
                by_key[key] = incident
                open_rules.add(rule.id)
                kind = "open"
            elif finding.fired:
                kind = "update" if refire(incident, finding, now) else "refire"
            else:
                kind = "resolve" if settle(incident, finding, rule.hold_s, now) else "settle"
            decisions.transitions.append(Transition(kind, incident, rule, finding))
    decisions.live = [i for i in by_key.values() if i.is_open]
    return decisions


def control_false_discoveries(
    rules: Sequence[Rule], findings: Mapping[str, Mapping[str, Sequence[Finding]]]
) -> dict[str, dict[str, list[Finding]]]:
    """Findings (model -> rule id -> findings) with Benjamini–Hochberg applied per `fdr` rule.

    A rule's family is its tests of every model, group and version of the tick. A test fires only
    if it fired alone and its adjusted p-value is below 1 - confidence; the adjusted p-value and the
    family size are recorded in the observation (not for a p-value of 1, most of a tick)."""
    result = {m: {r: list(fs) for r, fs in by_rule.items()} for m, by_rule in findings.items()}
    for rule in rules:
        if not rule.fdr:
            continue
        family = [
            (model_id, index, finding)
            for model_id, by_rule in result.items()
            for index, finding in enumerate(by_rule.get(rule.id, ()))
            if "p_value" in finding.observation.get("test", {})  # a detector's finding has no p-value
        ]
        adjusted = benjamini_hochberg([f.observation["test"]["p_value"] for _, _, f in family])
        for (model_id, index, finding), p_adjusted in zip(family, adjusted, strict=True):
            if finding.observation["test"]["p_value"] >= 1.0:
                continue
            test = {**finding.observation["test"], "p_adjusted": p_adjusted, "tests_in_family": len(family)}
            result[model_id][rule.id][index] = replace(
                finding,
                fired=finding.fired and p_adjusted < 1.0 - rule.confidence,
                observation={**finding.observation, "test": test},
            )
    return result


def renotify(
    live: Sequence[Incident], now: float, remind_s: float, refresh_s: float = ALERT_REFRESH_S
) -> tuple[list[Incident], list[Incident]]:
    """(remind, refresh): open incidents to send again, stamped with `now`.

    Every incident not sent for `refresh_s` is sent to Alertmanager again (which would otherwise
    resolve it); of those, an unacknowledged one not sent to the webhooks for `remind_s` reminds
    them too (remind), the others go to Alertmanager only (refresh)."""
    due = [i for i in live if now - i.notified_at >= refresh_s]
    remind = [i for i in due if i.status == "open" and now - i.reminded_at >= remind_s]
    for incident in due:
        incident.notified_at = now
    for incident in remind:
        incident.reminded_at = now
    return remind, [i for i in due if i not in remind]


def causes(live: Iterable[Incident]) -> list[Cause]:
    """What each open incident asks of the gateways."""
    return [
        Cause(i.id, i.rule, i.severity, i.level, i.model_version, i.rollback, tuple(i.revoke), i.rollback_to)
        for i in live
    ]


def rollback_target(asked: Sequence[Cause], predecessors: Mapping[str, Sequence[str]]) -> str | None:
    """The version the gateways should serve instead: the last one an incident names itself (say,
    the last approved artifact), else the predecessor of the first rollback incident's version."""
    rollback_to = None
    for cause in asked:
        if cause.rollback_to:
            rollback_to = cause.rollback_to
        elif cause.rollback and cause.version and rollback_to is None:
            earlier = predecessors.get(cause.version, [])
            rollback_to = earlier[0] if earlier else None
    return rollback_to


def revoke_principals(asked: Iterable[Cause]) -> list[str]:
    """Every principal or API key an open incident asks to cut off, sorted, once each."""
    return sorted({who for cause in asked for who in cause.revoke})


@dataclass(frozen=True)
class ControlDecision:
    """A model's level after the tick, and the control message to publish (None: nothing changed)."""

    level: int
    message: ControlMessage | None


def control(
    model_id: str,
    live: Sequence[Incident],
    state: ControlState,
    predecessors: Mapping[str, Sequence[str]],
    now: float,
) -> ControlDecision:
    """The level is the maximum of the open incidents' levels and any override (0 with neither).

    A message (with the next seq) is due when the level, the principals to revoke or the rollback
    target differ from the last message acknowledged (or, with none, from the stored level)."""
    asked = causes(live)
    level = target_level(asked, state.override)
    rollback_to = rollback_target(asked, predecessors)
    revoke = revoke_principals(asked)
    last = state.last
    sent = (last.level, last.revoke_principals, last.rollback_to) if last else (state.level, [], None)
    if (level, revoke, rollback_to) == sent:
        return ControlDecision(level, None)  # gateways already route this way
    message = build_message(
        model_id,
        state.seq + 1,
        level,
        asked,
        override=state.override,
        rollback_to=rollback_to,
        issued_at=now,
        revoke_principals=revoke,
    )
    return ControlDecision(level, message)


class PersonCommand(Protocol):
    """What a decision needs of a queued command (monitor.incidents.commands.Command)."""

    @property
    def action(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def incident_id(self) -> str | None: ...
    @property
    def who(self) -> str: ...
    @property
    def why(self) -> str: ...
    @property
    def level(self) -> int | None: ...


@dataclass(frozen=True)
class CommandEffect:
    """What a command changed: an override (set or released), or an incident (to save and
    publish, and keep quiet until `quiet_until` when it was resolved); or the error it failed with."""

    error: str = ""
    sets_override: bool = False
    override: int | None = None
    incident: Incident | None = None
    quiet_until: float | None = None


def command(
    cmd: PersonCommand,
    incidents: list[Incident],
    state: ControlState,
    quiet_s: Mapping[str, float],
    now: float,
) -> CommandEffect:
    """Apply a person's command to the model's open incidents and control state (both in place).

    escalate sets an override level, release removes it; acknowledge, mitigate and resolve move
    an open incident (an error for an incident not open or a status it cannot leave). A resolved
    incident leaves `incidents` and its key stays quiet for its rule's window (`quiet_s`, rule id
    -> seconds; 0 for a rule no longer in the rule set)."""
    if cmd.action in ("escalate", "release"):
        state.override = cmd.level if cmd.action == "escalate" else None
        return CommandEffect(sets_override=True, override=state.override)
    incident = next((i for i in incidents if i.id == cmd.incident_id), None)
    try:
        if incident is None:
            raise TransitionError(f"incident {cmd.incident_id} is not open on {cmd.model_id}")
        apply_action(incident, cmd.action, cmd.who, cmd.why, now)
    except TransitionError as exc:
        return CommandEffect(error=str(exc))
    if incident.status != "resolved":
        return CommandEffect(incident=incident)
    incidents.remove(incident)
    return CommandEffect(incident=incident, quiet_until=now + quiet_s.get(incident.rule, 0))


def refreeze(frozen: WindowStats | None, frozen_at: float, live: WindowStats | None, now: float) -> bool:
    """Whether a superseded version's frozen reference is (re)written from its live one now.

    Only while it settles (never frozen, or frozen less than REFREEZE_S ago), and only when the live
    reference has events and holds more (events + labels) than the frozen one."""
    settling = frozen is None or now - frozen_at < REFREEZE_S
    return bool(
        settling
        and live is not None
        and live.count
        and (frozen is None or live.count + live.labelled > frozen.count + frozen.labelled)
    )
