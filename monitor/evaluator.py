"""The evaluator: once per interval on the Faust leader, rules → incidents → escalation → control.

It reads every model's windows in a few pipelined round trips, evaluates each rule per active
version, opens/updates/settles incidents (one per model, rule and group), derives each model's
level from its open incidents and any override, and publishes a control message on every change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import msgspec
import orjson
from redis.asyncio import Redis

from monitor.aggregates.access import ACCESS_VERSION
from monitor.aggregates.predictions import group_prefix
from monitor.aggregates.window import VersionWindows, WindowStats, sum_buckets
from monitor.catchup import SilenceHold
from monitor.control import Cause, Publisher, build_message, target_level
from monitor.incidents.commands import Command, CommandQueue, CommandResult
from monitor.incidents.delivery import Deliverer
from monitor.incidents.evidence import incident_dir, write_evidence
from monitor.incidents.incident import (
    Incident,
    TransitionError,
    apply_action,
    open_incident,
    refire,
    settle,
)
from monitor.incidents.notify import render_bias_notification, render_notification
from monitor.incidents.store import ControlState, IncidentStore
from monitor.rules.bias import evaluate_bias
from monitor.rules.evaluate import Finding, evaluate, evaluate_silence
from monitor.rules.kinds import BIAS_METRICS, LABEL_METRICS, SECURITY_METRICS
from monitor.rules.schema import SEVERITY_RANK, Rule, RuleSet
from monitor.rules.security import evaluate_security
from monitor.stats import benjamini_hochberg
from monitor.store.impact import affected
from monitor.store.keys import Keys
from monitor.store.redis import read_model_index
from monitor.store.windows import WindowReader

log = logging.getLogger(__name__)

ACTIVE_S = 8 * 86_400
FROZEN_AT = "_frozen_at"  # a field of the frozen reference hash: when it was first frozen
REFREEZE_S = 3600.0  # a version with no prediction for this long is no longer evaluated
# Alertmanager resolves an alert nobody re-sends within its resolve_timeout (5 min by default).
ALERT_REFRESH_S = 60.0
EVIDENCE_LIST_BOUND = 10_000  # request and subject ids kept per bias incident; the rest are counted


@dataclass
class ModelView:
    """What the evaluator knows of one model at one tick."""

    model_id: str
    last_event_s: float | None
    versions: list[str]  # active versions, oldest first (by first minute seen)
    predecessors: dict[str, list[str]]  # version -> earlier versions, newest first
    windows: dict[str, VersionWindows] = field(default_factory=dict)
    frozen: dict[str, WindowStats] = field(default_factory=dict)  # version -> frozen reference
    access: VersionWindows | None = None  # access-log and registry counters, if the model has any


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
    # Every active version's windows as the rules read them (the metrics export the same windows)
    windows: dict[tuple[str, str], VersionWindows] = field(default_factory=dict)
    last_event_s: dict[str, float] = field(default_factory=dict)
    silence_held: bool = False  # silence rules held: the monitor is behind its input (catch-up hold)
    detection_delay_s: float = 0.0
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
        evidence_dir: Path = Path("evidence"),
        contact: str = "the on-call incident commander",
        deliverer: Deliverer | None = None,
        renotify_s: float = 4 * 3600,
        silence_hold: SilenceHold | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.rules = rules
        self.publisher = publisher
        self.clock = clock
        self.evidence_dir = evidence_dir
        self.contact = contact
        self.deliverer = deliverer
        self.renotify_s = renotify_s
        self.reader = reader or WindowReader(redis, keys)
        self.reader.require(rule.window_s for rule in rules.rules)
        self.reader.require_users(rule.window_s for rule in rules.rules if rule.metric == "unserved_users")
        self.incidents = IncidentStore(redis, keys)
        self.commands = CommandQueue(redis, keys)
        self._rule_ids = {rule.id for rule in rules.rules}
        self.last_report = TickReport()
        # Without a hold (a test driving Redis directly, no consumer) silence is always judged.
        self.silence_hold = silence_hold
        self._silence_held = False

    async def tick(self) -> TickReport:
        """One evaluation of every rule against every model."""
        started = time.perf_counter()
        now = self.clock()
        report = TickReport()
        if self.silence_hold is not None:
            catch_up = await self.silence_hold.check(now)
            report.silence_held, report.detection_delay_s = catch_up.held, catch_up.delay_s
        self._silence_held = report.silence_held
        models, access = await self._models(now)
        pairs = [(m.model_id, v) for m in models for v in m.versions]
        pairs += [(m.model_id, ACCESS_VERSION) for m in models if m.model_id in access]
        windows = await self.reader.read(pairs, now)
        self.reader.forget(set(pairs))
        for model in models:
            model.windows = {v: windows[(model.model_id, v)] for v in model.versions}
            model.access = windows.get((model.model_id, ACCESS_VERSION))
            for version, w in model.windows.items():
                report.day[(model.model_id, version)] = w.window(86_400)
                report.windows[(model.model_id, version)] = w
            if model.last_event_s is not None:
                report.last_event_s[model.model_id] = model.last_event_s
        await self._freeze_references(models)
        model_ids = [m.model_id for m in models]
        open_by_model = await self.incidents.open_incidents(model_ids)
        states = await self.incidents.control_states(model_ids)
        commands = await self.commands.take(model_ids)
        results: list[CommandResult] = []
        for model_id in model_ids:
            results += await self._apply_commands(commands[model_id], open_by_model[model_id], states[model_id], now)
        quiet = await self.incidents.quiet(model_ids)
        # Phase 1: every finding of every model, so the false-discovery rate is controlled over
        # the whole tick. Phase 2: act on them model by model.
        findings = {m.model_id: self._model_findings(m, now) for m in models}
        self._control_false_discoveries(findings)
        for model in models:
            report.findings.extend(f for fs in findings[model.model_id].values() for f in fs)
            await self._act(
                model, findings[model.model_id], open_by_model[model.model_id],
                states[model.model_id], now, report, quiet[model.model_id],
            )
        # Results last: a person told "applied" finds the level it leads to already in force.
        for result in results:
            await self.commands.record(result)
        report.seconds = time.perf_counter() - started
        self.last_report = report
        return report

    async def _models(self, now: float) -> tuple[list[ModelView], set[str]]:
        """Every model with any state, and which of them have access-log or registry events.

        A model known only from its incidents or its control state is still evaluated: people's
        commands for it are applied and its level is set (and exported) like any other's."""
        index = await read_model_index(self.redis, self.keys)
        access = set(index.access)
        ids = index.all
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
        return models, access

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
        now = self.clock()
        for (model, version), raw in zip(wanted, stored, strict=True):
            fields: dict[str | bytes, str | bytes] = {_text(k): v for k, v in raw.items()}
            frozen_at = float(fields.pop(FROZEN_AT, 0) or 0)
            frozen = WindowStats.from_counters(sum_buckets([fields])) if fields else None
            live = model.windows[version].reference() if version in model.windows else None
            # The successor can show up before all of the predecessor's history (and its late
            # labels) is in: for its first hour the frozen reference may still grow.
            settling = frozen is None or now - frozen_at < REFREEZE_S
            if settling and live is not None and live.count and (
                frozen is None or live.count + live.labelled > frozen.count + frozen.labelled
            ):
                to_freeze.append((model, version, live, frozen_at or now))
            elif frozen is not None:
                model.frozen[version] = frozen
        if to_freeze:
            async with self.redis.pipeline(transaction=False) as pipe:
                for model, version, _, frozen_at in to_freeze:
                    counters = model.windows[version].reference_counters()
                    key = self.keys.reference(model.model_id, version)
                    pipe.delete(key)
                    mapping: dict[str | bytes, str | int | float] = {name: value for name, value in counters.items()}
                    mapping[FROZEN_AT] = frozen_at
                    pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]  # redis-py's Mapping is invariant
                    pipe.expire(key, 15 * 86_400)
                await pipe.execute()
            for model, version, reference, _ in to_freeze:
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

    async def _apply_commands(
        self, commands: list[Command], incidents: list[Incident], state: ControlState, now: float
    ) -> list[CommandResult]:
        """People's commands, in the order they came, before the monitor's own decisions."""
        results = []
        for command in commands:
            error = ""
            try:
                if command.action in ("escalate", "release"):
                    level = command.level if command.action == "escalate" else None
                    await self.incidents.set_override(command.model_id, level)
                    state.override = level
                else:
                    incident = next((i for i in incidents if i.id == command.incident_id), None)
                    if incident is None:
                        raise TransitionError(f"incident {command.incident_id} is not open on {command.model_id}")
                    apply_action(incident, command.action, command.who, command.why, now)
                    if incident.status == "resolved":
                        incidents.remove(incident)
                        rule = self.rules.by_id(incident.rule) if incident.rule in self._rule_ids else None
                        hold = rule.window_s if rule else 0
                        await self.incidents.keep_quiet(command.model_id, incident.dedup_key, now + hold)
                    await self.incidents.save([incident])
                    await self._publish_incidents([incident])
            except TransitionError as exc:
                error = str(exc)
            results.append(CommandResult(id=command.id, ok=not error, error=error, applied_at=now))
            log.info("command %s %s on %s by %s: %s", command.id, command.action, command.model_id,
                     command.who, error or "applied")
        return results

    def _model_findings(self, model: ModelView, now: float) -> dict[str, list[Finding]]:
        return {rule.id: self._findings(rule, model, now) for rule in self.rules.rules}

    def _control_false_discoveries(self, findings: dict[str, dict[str, list[Finding]]]) -> None:
        """Benjamini–Hochberg over each `fdr` rule's tests of all models, groups and versions."""
        for rule in self.rules.rules:
            if not rule.fdr:
                continue
            family = [
                (model_id, index, finding)
                for model_id, by_rule in findings.items()
                for index, finding in enumerate(by_rule[rule.id])
            ]
            adjusted = benjamini_hochberg([f.observation["test"]["p_value"] for _, _, f in family])
            for (model_id, index, finding), p_adjusted in zip(family, adjusted, strict=True):
                if finding.observation["test"]["p_value"] >= 1.0:
                    continue  # its adjusted p-value is 1 too: nothing to record (most of a tick)
                test = {**finding.observation["test"], "p_adjusted": p_adjusted, "tests_in_family": len(family)}
                findings[model_id][rule.id][index] = replace(
                    finding,
                    fired=finding.fired and p_adjusted < 1.0 - rule.confidence,
                    observation={**finding.observation, "test": test},
                )

    async def _act(
        self,
        model: ModelView,
        findings: dict[str, list[Finding]],
        incidents: list[Incident],
        state: ControlState,
        now: float,
        report: TickReport,
        quiet: dict[str, float],
    ) -> None:
        by_key = {i.dedup_key: i for i in incidents}
        open_rules = {i.rule for i in incidents}
        changed: list[Incident] = []
        for rule in self.rules.rules:  # in file order: an incident opened now inhibits the rules after it
            if set(rule.inhibited_by) & open_rules:
                continue
            merged: dict[str, Finding] = {}
            for finding in findings[rule.id]:
                kept = merged.get(finding.dedup_key)
                if kept is None or _worse(finding, kept):
                    merged[finding.dedup_key] = finding
            for key, finding in merged.items():
                incident = by_key.get(key)
                if incident is None and quiet.get(key, 0.0) > now:
                    continue  # a person resolved it; its window still holds what they judged
                if finding.fired and incident is None:
                    incident = open_incident(rule, finding, now)
                    if rule.category == "bias":
                        await self._record_impact(incident, model, finding)
                    elif rule.category == "security":
                        await self._record_security(incident, finding)
                    await self._record_evidence(incident, rule, model, finding)
                    by_key[key] = incident
                    open_rules.add(rule.id)
                    report.opened.append(incident)
                    changed.append(incident)
                    log.warning("incident %s opened: %s (%s)", incident.id, incident.summary, incident.severity)
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
        for incident in changed:  # just published: Alertmanager and webhooks have them
            incident.notified_at = incident.notified_at or now
            incident.reminded_at = incident.reminded_at or now
        before = {i.id: (i.notified_at, i.reminded_at) for i in live}
        self._renotify(live, set(), now)
        await self.incidents.save([i for i in live if (i.notified_at, i.reminded_at) != before[i.id] or i in changed])
        await self._escalate(model, live, state, now, report)

    async def _record_evidence(self, incident: Incident, rule: Rule, model: ModelView, finding: Finding) -> None:
        """The evidence every incident keeps (docs/incidents.md): window aggregates, the rule and the rules
        file hash, model version and checksum, the newest raw events, Kafka offsets at detection."""
        model_id = incident.model_id
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(self.keys.recent_predictions(model_id), 0, -1)
            pipe.hgetall(self.keys.offsets(model_id))
            pipe.lrange(self.keys.deployments(model_id), 0, 19)
            recent, offsets, deployments = await pipe.execute()
        windows = model.windows.get(finding.version or "") or model.access
        window = asdict(windows.window(rule.window_s)) if windows else None
        deployed = [orjson.loads(d) for d in deployments]
        checksum = next((d["sha256"] for d in deployed if d["version"] == incident.model_version), None)
        pretty = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
        folder = incident_dir(self.evidence_dir, incident.id)
        incident.evidence_ref = str(folder)
        files = {
            "incident.json": msgspec.json.format(msgspec.json.encode(incident), indent=2),
            "rule.json": orjson.dumps({"rule": rule.model_dump(), "rules_sha256": self.rules.sha256,
                                       "rules_files": list(self.rules.sources)}, option=pretty),
            "window.json": orjson.dumps({"window_s": rule.window_s, "now": self.clock(), "stats": window}, option=pretty),
            "model.json": orjson.dumps({"model_id": model_id, "version": incident.model_version,
                                        "sha256": checksum, "versions": model.versions,
                                        "deployments": deployed}, option=pretty),
            "recent_events.json": b"[" + b",".join(recent) + b"]",
            "offsets.json": orjson.dumps({_text(k): int(v) for k, v in offsets.items()}, option=pretty),
        }
        if rule.category != "bias":  # the bias notification is written with its impact
            files["notification.txt"] = render_notification(incident, contact=self.contact).encode()
        write_evidence(self.evidence_dir, incident.id, files)

    async def _record_security(self, incident: Incident, finding: Finding) -> None:
        """Containment evidence: the principal's recent access records and the Kafka offsets that
        bound them; for a tampered artifact, expected and observed checksums and a rollback target."""
        obs = finding.observation
        files: dict[str, bytes] = {}
        model_id = incident.model_id
        if "sha256" in obs:
            approved = {_text(k): orjson.loads(v) for k, v in (await self.redis.hgetall(self.keys.approvals(model_id))).items()}
            seen = await self.redis.hget(self.keys.tampered(model_id), f"{obs['version']}|{obs['sha256']}")
            deployments = [orjson.loads(d) for d in await self.redis.lrange(self.keys.deployments(model_id), 0, -1)]
            good = [d for d in deployments if d["approved"] and d["version"] != obs["version"]]
            by_time = sorted(approved.items(), key=lambda kv: kv[1]["ts"], reverse=True)
            fallback = [k.split("|", 1)[0] for k, _ in by_time if not k.startswith(f"{obs['version']}|")]
            incident.rollback_to = good[0]["version"] if good else (fallback[0] if fallback else None)
            integrity = {
                "model_id": model_id,
                "version": obs["version"],
                "observed_sha256": obs["sha256"],
                "expected_sha256": sorted(k.split("|", 1)[1] for k in approved if k.startswith(f"{obs['version']}|")),
                "unapproved_event": orjson.loads(seen) if seen else None,
                "rollback_to": incident.rollback_to,
                "approved_deployments": [d for d in deployments if d["approved"]][:20],
            }
            incident.observation = {**incident.observation, **{k: integrity[k] for k in ("expected_sha256", "rollback_to")}}
            files["integrity.json"] = orjson.dumps(integrity, option=orjson.OPT_INDENT_2)
        who = obs.get("principal") or obs.get("api_key")
        if who:
            records = [orjson.loads(r) for r in await self.redis.lrange(self.keys.recent_access(model_id), 0, -1)]
            mine = [r for r in records if r["principal"] == who or r.get("api_key_id") == who]
            offsets: dict[str, list[int]] = {}
            for r in mine:
                span = offsets.setdefault(f"{r['topic']}:{r['partition']}", [r["offset"], r["offset"]])
                span[0], span[1] = min(span[0], r["offset"]), max(span[1], r["offset"])
            incident.scope = {"principal": who, "recent_access_events": len(mine), "kafka_offsets": offsets}
            files["access_events.json"] = orjson.dumps(
                {"principal": who, "kafka_offsets": offsets, "events": mine[:EVIDENCE_LIST_BOUND]},
                option=orjson.OPT_INDENT_2,
            )
        incident.evidence_ref = str(write_evidence(self.evidence_dir, incident.id, files))

    async def _record_impact(self, incident: Incident, model: ModelView, finding: Finding) -> None:
        """Who was affected: count them, keep their decision records in the evidence, notify."""
        obs = finding.observation
        version = finding.version or ""
        windows = model.windows[version]
        start = windows.start_of(int(obs["window_s"]))
        kept = await affected(
            self.redis, self.keys, model.model_id, version,
            group_prefix(obs["attribute"], obs["group"]), start, windows.now,
        )
        unfavourable = int(obs["unfavourable"])
        bound = EVIDENCE_LIST_BOUND
        incident.scope = {
            "window_start_s": start,
            "window_end_s": windows.now,
            "group": f"{obs['attribute']}={obs['group']}",
            "affected_decisions": unfavourable,
            "affected_subjects": len(kept.subject_ids),
            "kept_decisions": len(kept.request_ids),
            "complete": len(kept.request_ids) == unfavourable,
            "request_ids_preview": kept.request_ids[:20],
        }
        affected_file = {
            "incident": incident.id,
            "group": incident.scope["group"],
            "window": [start, windows.now],
            "affected_decisions": unfavourable,
            "request_ids": kept.request_ids[:bound],
            "request_ids_beyond_bound": max(0, len(kept.request_ids) - bound),
            "subject_ids": kept.subject_ids[:bound],
            "subject_ids_beyond_bound": max(0, len(kept.subject_ids) - bound),
            "not_kept": unfavourable - len(kept.request_ids),
        }
        folder = incident_dir(self.evidence_dir, incident.id)
        incident.evidence_ref = str(folder)
        notification = render_bias_notification(incident, contact=self.contact)
        write_evidence(self.evidence_dir, incident.id, {
            "affected.json": orjson.dumps(affected_file, option=orjson.OPT_INDENT_2),
            "notification.txt": notification.encode(),
        })

    def _findings(self, rule: Rule, model: ModelView, now: float) -> list[Finding]:
        if rule.compare == "silence":
            if self._silence_held:
                return []  # behind on the input: silence says nothing yet (monitor.rules.catchup)
            finding = evaluate_silence(rule, model.model_id, model.last_event_s, now)
            return [] if finding is None else [finding]
        if rule.metric in SECURITY_METRICS:
            if model.access is None:
                return []
            return evaluate_security(rule, model.model_id, model.access, baseline=model.access.reference())
        facts = self.rules.models.get(model.model_id)
        found: list[Finding] = []
        for version in model.versions:
            windows, baseline = model.windows[version], self._baseline(rule, model, version)
            if rule.metric in BIAS_METRICS:
                found += evaluate_bias(
                    rule, model.model_id, version, windows, baseline=baseline, fairness=self.rules.fairness
                )
            else:
                found += evaluate(rule, model.model_id, version, windows, baseline=baseline, facts=facts)
        return found

    async def _publish_incidents(self, incidents: list[Incident]) -> None:
        flushed = []
        events = []
        for incident in incidents:
            for kind in incident.outbox:
                event = incident.event(kind)
                await self.publisher.incident(event)
                events.append(event)
            if incident.outbox:
                incident.outbox = []
                flushed.append(incident)
        if self.deliverer is not None:
            self.deliverer.submit_group(events)
        await self.incidents.save(flushed)

    def _renotify(self, live: list[Incident], notified: set[str], now: float) -> None:
        """Keep open incidents alive in Alertmanager, and remind the webhooks of unattended ones."""
        if self.deliverer is None:
            return
        refresh = [i for i in live if i.id not in notified and now - i.notified_at >= ALERT_REFRESH_S]
        remind = [i for i in refresh if i.status == "open" and now - i.reminded_at >= self.renotify_s]
        for incident in refresh:
            incident.notified_at = now
        for incident in remind:
            incident.reminded_at = now
        if remind:
            self.deliverer.submit_group([i.event("updated") for i in remind])
        rest = [i for i in refresh if i not in remind]
        if rest:
            self.deliverer.submit_group([i.event("updated") for i in rest], webhooks=False)

    async def _escalate(
        self, model: ModelView, live: list[Incident], state: ControlState, now: float, report: TickReport
    ) -> None:
        if state.pending is not None:  # a message staged before a crash: publish it first
            await self.publisher.control(state.pending)
            await self.incidents.control_published(state.pending)
        causes = [
            Cause(i.id, i.rule, i.severity, i.level, i.model_version, i.rollback, tuple(i.revoke), i.rollback_to)
            for i in live
        ]
        level = target_level(causes, state.override)
        report.levels[model.model_id] = level
        rollback_to = None
        for cause in causes:
            if cause.rollback_to:
                rollback_to = cause.rollback_to
            elif cause.rollback and cause.version and rollback_to is None:
                earlier = model.predecessors.get(cause.version, [])
                rollback_to = earlier[0] if earlier else None
        revoke = sorted({who for cause in causes for who in cause.revoke})
        last = state.last
        sent = (last.level, last.revoke_principals, last.rollback_to) if last else (state.level, [], None)
        if (level, revoke, rollback_to) == sent:
            return  # gateways already route this way
        message = build_message(
            model.model_id, state.seq + 1, level, causes,
            override=state.override, rollback_to=rollback_to, issued_at=now,
            revoke_principals=revoke,
        )
        await self.incidents.stage_control(message)
        await self.publisher.control(message)
        await self.incidents.control_published(message)
        for incident in live:
            incident.actions.append({"at": now, "control_seq": message.seq, "level": level})
        await self.incidents.save(live)
        log.warning("control: %s level %d → %d (seq %d): %s", model.model_id, state.level, level, message.seq, message.reason)


def _enough(rule: Rule, stats: WindowStats) -> bool:
    if rule.metric in LABEL_METRICS:
        return stats.labelled >= rule.min_samples
    if rule.metric == "latency":
        return stats.latency_count >= rule.min_samples
    return stats.count >= rule.min_samples


def _worse(a: Finding, b: Finding) -> bool:
    """Of two versions' findings for the same incident, keep the one that fired, then the worst."""
    return (a.fired, SEVERITY_RANK[a.severity], a.level) > (b.fired, SEVERITY_RANK[b.severity], b.level)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
