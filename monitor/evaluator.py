"""The evaluator: once per interval on the Faust leader, rules → incidents → escalation → control.

It reads every model's windows in a few pipelined round trips, evaluates each rule per active
version, opens/updates/settles incidents (one per model, rule and group), derives each model's
level from its open incidents and any override, and publishes a control message on every change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from monitor.aggregates.window import WindowStats, sum_buckets
from monitor.control import Cause, Publisher, build_message, target_level
from monitor.incidents.model import Incident, open_incident, refire, settle
from monitor.incidents.store import ControlState, IncidentStore
from monitor.rules.evaluate import Finding, evaluate, evaluate_silence
from monitor.rules.schema import SEVERITY_RANK, Rule, RuleSet
from monitor.store.keys import Keys
from monitor.store.windows import VersionWindows, WindowReader

log = logging.getLogger(__name__)

ACTIVE_S = 8 * 86_400  # a version with no prediction for this long is no longer evaluated
ACCURACY_METRICS = {"accuracy", "accuracy_gap"}


@dataclass
class ModelView:
    """What the evaluator knows of one model at one tick."""

    model_id: str
    last_event_s: float | None
    versions: list[str]  # active versions, oldest first (by first minute seen)
    predecessors: dict[str, list[str]]  # version -> earlier versions, newest first
    windows: dict[str, VersionWindows] = field(default_factory=dict)
    frozen: dict[str, WindowStats] = field(default_factory=dict)  # version -> frozen reference


@dataclass
class TickReport:
    """What one tick did (for logs, metrics and tests)."""

    opened: list[Incident] = field(default_factory=list)
    updated: list[Incident] = field(default_factory=list)
    resolved: list[Incident] = field(default_factory=list)
    levels: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    live: list[Incident] = field(default_factory=list)  # every incident not resolved, after the tick
    day: dict[tuple[str, str], WindowStats] = field(default_factory=dict)  # 24 h window per version
    last_event_s: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class Evaluator:
    """Evaluates the rule set against every model and acts on what it finds."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        rules: RuleSet,
        publisher: Publisher,
        *,
        clock: Callable[[], float] = time.time,
        reader: WindowReader | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.rules = rules
        self.publisher = publisher
        self.clock = clock
        self.reader = reader or WindowReader(redis, keys)
        self.incidents = IncidentStore(redis, keys)
        self.last_report = TickReport()

    async def tick(self) -> TickReport:
        """One evaluation of every rule against every model."""
        started = time.perf_counter()
        now = self.clock()
        report = TickReport()
        models = await self._models(now)
        pairs = [(m.model_id, v) for m in models for v in m.versions]
        windows = await self.reader.read(pairs, now)
        self.reader.forget(set(pairs))
        for model in models:
            model.windows = {v: windows[(model.model_id, v)] for v in model.versions}
            for version, w in model.windows.items():
                report.day[(model.model_id, version)] = w.window(86_400)
            if model.last_event_s is not None:
                report.last_event_s[model.model_id] = model.last_event_s
        await self._freeze_references(models)
        model_ids = [m.model_id for m in models]
        open_by_model = await self.incidents.open_incidents(model_ids)
        states = await self.incidents.control_states(model_ids)
        for model in models:
            await self._evaluate_model(model, open_by_model[model.model_id], states[model.model_id], now, report)
        report.seconds = time.perf_counter() - started
        self.last_report = report
        return report

    async def _models(self, now: float) -> list[ModelView]:
        ids = sorted(_text(m) for m in await self.redis.smembers(self.keys.models()))
        async with self.redis.pipeline(transaction=False) as pipe:
            for model_id in ids:
                pipe.hget(self.keys.meta(model_id), "last_event_s")
                pipe.hgetall(self.keys.versions(model_id))
                pipe.hgetall(self.keys.first_seen(model_id))
            replies = iter(await pipe.execute())
        models = []
        for model_id in ids:
            last, newest, first = next(replies), next(replies), next(replies)
            order = sorted((float(first.get(v, newest[v])), _text(v)) for v in newest)
            ordered = [v for _, v in order]
            active = [v for v in ordered if float(newest[v.encode()]) >= now - ACTIVE_S]
            predecessors = {v: list(reversed(ordered[:i])) for i, v in enumerate(ordered)}
            models.append(
                ModelView(model_id, None if last is None else float(last), active, predecessors)
            )
        return models

    async def _freeze_references(self, models: list[ModelView]) -> None:
        """Keep each superseded version's reference as it stood when its successor appeared."""
        wanted = [(m, v) for m in models for v in {p for ps in m.predecessors.values() for p in ps[:1]}]
        if not wanted:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for model, version in wanted:
                pipe.hgetall(self.keys.reference(model.model_id, version))
            stored = await pipe.execute()
        to_freeze = []
        for (model, version), raw in zip(wanted, stored, strict=True):
            if raw:
                model.frozen[version] = WindowStats.from_counters(sum_buckets([raw]))
            elif version in model.windows:
                reference = model.windows[version].reference()
                if reference.count:
                    to_freeze.append((model, version, reference))
        if to_freeze:
            async with self.redis.pipeline(transaction=False) as pipe:
                for model, version, _ in to_freeze:
                    counters = model.windows[version].reference_counters()
                    key = self.keys.reference(model.model_id, version)
                    pipe.hset(key, mapping={name: value for name, value in counters.items()})
                    pipe.expire(key, 15 * 86_400)
                await pipe.execute()
            for model, version, reference in to_freeze:
                model.frozen[version] = reference
                log.info("froze the reference of %s %s (a newer version is live)", model.model_id, version)

    def _baseline(self, rule: Rule, model: ModelView, version: str) -> WindowStats | None:
        windows = model.windows[version]
        if rule.baseline == "week_ago":
            return windows.week_ago(rule.window_s)
        if rule.baseline != "reference":
            return None
        own = windows.reference()
        if _enough(rule, own):
            return own
        for earlier in model.predecessors.get(version, []):
            frozen = model.frozen.get(earlier)
            if frozen is not None and _enough(rule, frozen):
                return frozen
        return own

    async def _evaluate_model(
        self, model: ModelView, incidents: list[Incident], state: ControlState, now: float, report: TickReport
    ) -> None:
        open_rules = {i.rule for i in incidents}
        findings: dict[str, Finding] = {}
        for rule in self.rules.rules:
            if set(rule.inhibited_by) & open_rules:
                continue
            for finding in self._findings(rule, model, now):
                report.findings.append(finding)
                kept = findings.get(finding.dedup_key)
                if kept is None or _worse(finding, kept):
                    findings[finding.dedup_key] = finding
        by_key = {i.dedup_key: i for i in incidents}
        changed: list[Incident] = []
        for key, finding in findings.items():
            rule = self.rules.by_id(finding.rule_id)
            incident = by_key.get(key)
            if finding.fired and incident is None:
                incident = open_incident(rule, finding, now)
                by_key[key] = incident
                report.opened.append(incident)
                changed.append(incident)
                log.warning(
                    "incident %s opened: %s %s on %s %s (value %.4g, threshold %s)",
                    incident.id, rule.id, incident.severity, model.model_id, finding.version or "",
                    finding.observation.get("value", float("nan")), finding.observation.get("threshold"),
                )
            elif finding.fired and incident is not None:
                if refire(incident, finding, now):
                    report.updated.append(incident)
                changed.append(incident)
            elif incident is not None:
                if settle(incident, finding, rule.hold_s, now):
                    report.resolved.append(incident)
                    log.info("incident %s resolved by the monitor: %s back inside", incident.id, rule.id)
                changed.append(incident)
        await self.incidents.save(changed)
        await self._publish_incidents(changed)
        live = [i for i in by_key.values() if i.is_open]
        report.live.extend(live)
        await self._escalate(model, live, state, now, report)

    def _findings(self, rule: Rule, model: ModelView, now: float) -> list[Finding]:
        if rule.compare == "silence":
            finding = evaluate_silence(rule, model.model_id, model.last_event_s, now)
            return [] if finding is None else [finding]
        facts = self.rules.models.get(model.model_id)
        found: list[Finding] = []
        for version in model.versions:
            found += evaluate(
                rule, model.model_id, version, model.windows[version],
                baseline=self._baseline(rule, model, version), facts=facts,
            )
        return found

    async def _publish_incidents(self, incidents: list[Incident]) -> None:
        flushed = []
        for incident in incidents:
            for kind in incident.outbox:
                await self.publisher.incident(incident.event(kind))
            if incident.outbox:
                incident.outbox = []
                flushed.append(incident)
        await self.incidents.save(flushed)

    async def _escalate(
        self, model: ModelView, live: list[Incident], state: ControlState, now: float, report: TickReport
    ) -> None:
        if state.pending is not None:  # a message staged before a crash: publish it first
            await self.publisher.control(state.pending)
            await self.incidents.control_published(state.pending)
        causes = [
            Cause(i.id, i.rule, i.severity, i.level, i.model_version, i.rollback) for i in live
        ]
        level = target_level(causes, state.override)
        report.levels[model.model_id] = level
        if level == state.level:
            return
        rollback_to = None
        for cause in causes:
            if cause.rollback and cause.version:
                earlier = model.predecessors.get(cause.version, [])
                rollback_to = earlier[0] if earlier else None
        message = build_message(
            model.model_id, state.seq + 1, level, causes,
            override=state.override, rollback_to=rollback_to, issued_at=now,
        )
        await self.incidents.stage_control(message)
        await self.publisher.control(message)
        await self.incidents.control_published(message)
        for incident in live:
            incident.actions.append({"at": now, "control_seq": message.seq, "level": level})
        await self.incidents.save(live)
        log.warning("control: %s level %d → %d (seq %d): %s", model.model_id, state.level, level, message.seq, message.reason)


def _enough(rule: Rule, stats: WindowStats) -> bool:
    if rule.metric in ACCURACY_METRICS:
        return stats.labelled >= rule.min_samples
    if rule.metric == "latency":
        return stats.latency_count >= rule.min_samples
    return stats.count >= rule.min_samples


def _worse(a: Finding, b: Finding) -> bool:
    """Of two versions' findings for the same incident, keep the one that fired, then the worst."""
    return (a.fired, SEVERITY_RANK[a.severity], a.level) > (b.fired, SEVERITY_RANK[b.severity], b.level)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
