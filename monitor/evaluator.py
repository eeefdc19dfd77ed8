"""The evaluator: once per interval on the Faust leader, rules → incidents → escalation → control.

One tick reads (every model's totals for its detectors, monitor.detection; the windows due; open
incidents, control state, quiet periods, people's commands), turns alarms, open incidents and the
windowed rules into findings, lets `incidents.decide` decide, then saves, writes evidence
(`incidents.bundle`) and publishes. Nothing here decides anything on its own."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from redis.asyncio import Redis

from monitor.aggregates.access import ACCESS_VERSION
from monitor.aggregates.window import VersionWindows, WindowStats
from monitor.catchup import SilenceHold
from monitor.control import ControlState, Publisher
from monitor.detection import About, Detection, Display
from monitor.incidents import decide
from monitor.incidents.bundle import EvidenceRecorder
from monitor.incidents.commands import Command, CommandQueue, CommandResult
from monitor.incidents.delivery import Deliverer
from monitor.incidents.incident import Incident
from monitor.incidents.store import IncidentStore
from monitor.rules.bias import evaluate_bias
from monitor.rules.evaluate import Finding, evaluate, evaluate_silence
from monitor.rules.kinds import BIAS_METRICS, LABEL_METRICS, SECURITY_METRICS
from monitor.rules.questions import sequential
from monitor.rules.schema import Rule, RuleSet
from monitor.rules.security import evaluate_security
from monitor.store.catalog import ModelCatalog, ModelView
from monitor.store.keys import Keys
from monitor.store.windows import WindowReader

log = logging.getLogger(__name__)


@dataclass
class TickReport:
    """What one tick did (for logs, metrics and tests)."""

    opened: list[Incident] = field(default_factory=list)
    updated: list[Incident] = field(default_factory=list)  # severity or level rose
    resolved: list[Incident] = field(default_factory=list)
    levels: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    live: list[Incident] = field(default_factory=list)  # every incident not resolved, after the tick
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
        tick_s: float = 1.0,
        window_refresh_s: float = 60.0,
        detector_save_s: float = 10.0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.rules = rules
        self.publisher = publisher
        self.clock = clock
        self.deliverer = deliverer
        self.renotify_s = renotify_s
        self.reader = reader or WindowReader(redis, keys)
        self.reader.require(rule.window_s for rule in rules.rules)
        self.reader.require_users(rule.window_s for rule in rules.rules if rule.metric == "unserved_users")
        self.catalog = ModelCatalog(redis, keys)
        self.evidence = EvidenceRecorder(self.catalog, rules, evidence_dir, contact=contact, clock=clock)
        self.incidents = IncidentStore(redis, keys)
        self.commands = CommandQueue(redis, keys)
        # A key a person resolved stays quiet for its rule's window (0 for a rule since removed).
        self._quiet_s = {rule.id: float(rule.window_s) for rule in rules.rules}
        self.last_report = TickReport()
        # Without a hold (a test driving Redis directly, no consumer) silence is always judged.
        self.silence_hold = silence_hold
        self.detection = Detection(
            redis, keys, rules, tick_s=tick_s, refresh_s=window_refresh_s, save_s=detector_save_s
        )
        # Each version's windows as last read (a large fleet's are read about once a refresh period).
        self._windows: dict[tuple[str, str], VersionWindows] = {}
        # Superseded versions' frozen references as last read (re-read with the model's windows).
        self._frozen: dict[tuple[str, str], WindowStats] = {}

    async def tick(self) -> TickReport:
        """One evaluation of every rule against every model."""
        started = time.perf_counter()
        now = self.clock()
        report = TickReport()
        if self.silence_hold is not None:
            catch_up = await self.silence_hold.check(now)
            report.silence_held, report.detection_delay_s = catch_up.held, catch_up.delay_s
        models, access = await self.catalog.models(now)
        model_ids = [m.model_id for m in models]
        open_by_model = await self.incidents.open_incidents(model_ids)
        open_about = {m: {(i.rule, i.group) for i in incidents} for m, incidents in open_by_model.items()}
        await self.detection.take(model_ids)
        wanted = self.detection.wanted(open_about)
        await self._read_windows(models, access, now, report, wanted)
        self.detection.step(now)
        # Models that alarmed in this step, not read: their windows now (for findings and evidence).
        if alarmed := self.detection.wanted(open_about) - wanted:
            await self._read_more([m for m in models if m.model_id in alarmed], now, report)
        states = await self.incidents.control_states(model_ids)
        commands = await self.commands.take(model_ids)
        results: list[CommandResult] = []
        for model_id in model_ids:
            results += await self._apply_commands(
                commands[model_id], open_by_model[model_id], states[model_id], now
            )
        quiet = await self.incidents.quiet(model_ids)
        # Every finding of every model first, so the false-discovery rate is controlled over the
        # whole tick; then act on them model by model.
        windowed = self.detection.windowed_rules([w for m in models for w in m.windows.values()])
        findings = decide.control_false_discoveries(
            self.rules.rules,
            {
                m.model_id: self._model_findings(
                    m, now, open_about[m.model_id], windowed, held=report.silence_held
                )
                for m in models
            },
        )
        for model in models:
            report.findings.extend(f for fs in findings[model.model_id].values() for f in fs)
            await self._act(
                model,
                findings[model.model_id],
                open_by_model[model.model_id],
                states[model.model_id],
                now,
                report,
                quiet[model.model_id],
            )
        # Results last: a person told "applied" finds the level it leads to already in force.
        for result in results:
            await self.commands.record(result)
        await self.detection.save_due(model_ids)
        report.seconds = time.perf_counter() - started
        self.last_report = report
        return report

    async def _read_windows(
        self,
        models: list[ModelView],
        access: set[str],
        now: float,
        report: TickReport,
        wanted: set[str],
    ) -> None:
        """The windows due this tick (monitor.detection: all of a small fleet), the access counters
        of every model that has any, the frozen references, and the boundaries they re-state."""
        pairs = [(m.model_id, v) for m in models for v in m.versions]
        access_pairs = [(m.model_id, ACCESS_VERSION) for m in models if m.model_id in access]
        due = self.detection.due(pairs, now, wanted)
        windows = await self.reader.read(due + access_pairs, now)
        self.reader.forget(set(pairs + access_pairs))
        active, ids = set(pairs), {m.model_id for m in models}
        self._windows = {p: w for p, w in self._windows.items() if p in active}
        self._windows.update((p, windows[p]) for p in due)
        for model in models:
            model.windows = {
                v: windows[(model.model_id, v)] for v in model.versions if (model.model_id, v) in windows
            }
            model.access = windows.get((model.model_id, ACCESS_VERSION))
            if model.last_event_s is not None:
                report.last_event_s[model.model_id] = model.last_event_s
        report.windows = {p: self._windows[p] for p in pairs if p in self._windows}
        self._frozen = {p: f for p, f in self._frozen.items() if p[0] in ids}
        await self._freeze_references(models, now)
        for model in models:
            for version, w in model.windows.items():
                self.detection.refresh(
                    model.model_id, version, w, partial(self._baseline, model=model, version=version)
                )

    async def _read_more(self, models: list[ModelView], now: float, report: TickReport) -> None:
        """The windows of every version of `models`, read after the due ones of this tick."""
        windows = await self.reader.read([(m.model_id, v) for m in models for v in m.versions], now)
        self._windows.update(windows)
        report.windows.update(windows)
        for model in models:
            model.windows.update((v, windows[(model.model_id, v)]) for v in model.versions)
        await self._freeze_references(models, now)

    async def _freeze_references(self, models: list[ModelView], now: float) -> None:
        """Keep each superseded version's reference as it stood when its successor appeared (read
        for the models whose windows were read this tick, the only ones that can re-freeze)."""
        wanted = []
        for model in models:
            for version in {p for ps in model.predecessors.values() for p in ps[:1]}:
                if model.windows:
                    wanted.append((model, version))
                elif (model.model_id, version) in self._frozen:
                    model.frozen[version] = self._frozen[(model.model_id, version)]
        if not wanted:
            return
        stored = await self.catalog.frozen_references([(m.model_id, v) for m, v in wanted])
        to_freeze = []
        for (model, version), frozen in zip(wanted, stored, strict=True):
            live = model.windows[version].reference() if version in model.windows else None
            if live is not None and decide.refreeze(frozen.stats, frozen.frozen_at, live, now):
                to_freeze.append((model, version, live, frozen.frozen_at or now))
            elif frozen.stats is not None:
                model.frozen[version] = frozen.stats
                self._frozen[(model.model_id, version)] = frozen.stats
            else:
                self._frozen.pop((model.model_id, version), None)
        if not to_freeze:
            return
        await self.catalog.freeze(
            [
                (model.model_id, version, model.windows[version].reference_counters(), frozen_at)
                for model, version, _, frozen_at in to_freeze
            ]
        )
        for model, version, reference, _ in to_freeze:
            model.frozen[version] = reference
            self._frozen[(model.model_id, version)] = reference
            log.info("froze the reference of %s %s (a newer version is live)", model.model_id, version)

    def _baseline(
        self, rule: Rule, *, model: ModelView, version: str, windows: VersionWindows | None = None
    ) -> WindowStats | None:
        windows = windows or model.windows[version]
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
            effect = decide.command(command, incidents, state, self._quiet_s, now)
            if effect.sets_override:
                await self.incidents.set_override(command.model_id, effect.override)
            incident = effect.incident
            if incident is not None:
                if effect.quiet_until is not None:
                    await self.incidents.keep_quiet(command.model_id, incident.dedup_key, effect.quiet_until)
                await self.incidents.save([incident])
                await self._publish_incidents([incident])
            error = effect.error
            results.append(CommandResult(id=command.id, ok=not error, error=error, applied_at=now))
            log.info(
                "command %s %s on %s by %s: %s",
                command.id,
                command.action,
                command.model_id,
                command.who,
                error or "applied",
            )
        return results

    def _model_findings(
        self, model: ModelView, now: float, open_about: set[About], windowed: dict[str, Rule], *, held: bool
    ) -> dict[str, list[Finding]]:
        found = self.detection.findings(model.model_id, model.versions, open_about, self._display(model))
        for rule in self.rules.rules:
            if not sequential(rule):
                found[rule.id] = self._findings(windowed.get(rule.id, rule), model, now, held=held)
        return found

    def _display(self, model: ModelView) -> Display:
        """What today's window says of a sequential finding (its value and groups, for people)."""

        # One probe of a rule's window per version, whichever of its groups are shown.
        probed: dict[tuple[str, str], dict[str | None, dict[str, object]]] = {}

        def display(rule: Rule, version: str, group: str | None) -> dict[str, object] | None:
            windows = self._windows.get((model.model_id, version))
            if windows is None:
                return None
            if (rule.id, version) not in probed:
                baseline = self._baseline(rule, model=model, version=version, windows=windows)
                if rule.metric in BIAS_METRICS:
                    shown = evaluate_bias(
                        rule,
                        model.model_id,
                        version,
                        windows,
                        baseline=baseline,
                        fairness=self.rules.fairness,
                    )
                else:
                    facts = self.rules.models.get(model.model_id)
                    shown = evaluate(rule, model.model_id, version, windows, baseline=baseline, facts=facts)
                probed[(rule.id, version)] = {
                    f.group: {k: v for k, v in f.observation.items() if k != "test"} for f in shown
                }
            return probed[(rule.id, version)].get(group)

        return display

    def _findings(self, rule: Rule, model: ModelView, now: float, *, held: bool) -> list[Finding]:
        if rule.compare == "silence":
            if held:
                return []  # behind on the input: silence says nothing yet (monitor.rules.catchup)
            finding = evaluate_silence(rule, model.model_id, model.last_event_s, now)
            return [] if finding is None else [finding]
        if rule.metric in SECURITY_METRICS:
            if model.access is None:
                return []
            return evaluate_security(rule, model.model_id, model.access, baseline=model.access.reference())
        facts = self.rules.models.get(model.model_id)
        found: list[Finding] = []
        for version in model.windows:  # the versions whose windows were read this tick
            windows, baseline = model.windows[version], self._baseline(rule, model=model, version=version)
            if rule.metric in BIAS_METRICS:
                found += evaluate_bias(
                    rule, model.model_id, version, windows, baseline=baseline, fairness=self.rules.fairness
                )
            else:
                found += evaluate(rule, model.model_id, version, windows, baseline=baseline, facts=facts)
        return found

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
        """One model: decide its transitions, keep evidence of what opened, save, publish, escalate."""
        decided = decide.incident_transitions(self.rules.rules, findings, incidents, quiet, now)
        for t in decided.transitions:
            incident = t.incident
            if t.kind == "open":
                await self.evidence.record(incident, t.rule, model, t.finding)
                log.warning("incident %s opened: %s (%s)", incident.id, incident.summary, incident.severity)
            elif t.kind == "resolve":
                log.info("incident %s resolved by the monitor: %s back inside", incident.id, t.rule.id)
        report.opened += decided.of("open")
        report.updated += decided.of("update")
        report.resolved += decided.of("resolve")
        changed, live = decided.changed, decided.live
        for incident in changed:  # published below (the outbox makes sure of it, crash or not)
            incident.notified_at = incident.notified_at or now
            incident.reminded_at = incident.reminded_at or now
        stamped = self._renotify(live, now)
        await self.incidents.save(changed)
        await self._publish_incidents(changed)
        report.live.extend(live)
        ids = {i.id for i in changed}
        await self.incidents.save([i for i in stamped if i.id not in ids])  # changed ones are saved
        await self._escalate(model, live, state, now, report)

    async def _publish_incidents(self, incidents: list[Incident]) -> None:
        """Publish every incident's outbox events (then strike them), and hand them to delivery."""
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

    def _renotify(self, live: list[Incident], now: float) -> list[Incident]:
        """Keep open incidents alive in Alertmanager, and remind the webhooks of unattended ones;
        returns the incidents sent again (their stamps changed)."""
        if self.deliverer is None:
            return []
        remind, refresh = decide.renotify(live, now, self.renotify_s)
        if remind:
            self.deliverer.submit_group([i.event("updated") for i in remind])
        if refresh:
            self.deliverer.submit_group([i.event("updated") for i in refresh], webhooks=False)
        return remind + refresh

    async def _escalate(
        self, model: ModelView, live: list[Incident], state: ControlState, now: float, report: TickReport
    ) -> None:
        """Publish the model's control message when its level, rollback or revocations changed."""
        if state.pending is not None:  # a message staged before a crash: publish it first
            await self.publisher.control(state.pending)
            await self.incidents.control_published(state.pending)
            # It is now the last message sent: the next decision compares with it, not with the one
            # before (which would send the same routing again under the next seq).
            state.last, state.pending = state.pending, None
        decision = decide.control(model.model_id, live, state, model.predecessors, now)
        report.levels[model.model_id] = decision.level
        message = decision.message
        if message is None:
            return
        await self.incidents.stage_control(message)
        await self.publisher.control(message)
        await self.incidents.control_published(message)
        for incident in live:
            incident.actions.append({"at": now, "control_seq": message.seq, "level": message.level})
        await self.incidents.save(live)
        log.warning(
            "control: %s level %d → %d (seq %d): %s",
            model.model_id,
            state.level,
            message.level,
            message.seq,
            message.reason,
        )


def _enough(rule: Rule, stats: WindowStats) -> bool:
    if rule.metric in LABEL_METRICS:
        return stats.labelled >= rule.min_samples
    if rule.metric == "latency":
        return stats.latency_count >= rule.min_samples
    return stats.count >= rule.min_samples
