"""An incident's evidence bundle, assembled when it opens: what fired, on which data, who was affected.

Every incident keeps its rule (and the rules files' hash), the window aggregates it was judged on,
the model version and checksum, the newest raw events and the Kafka offsets at detection. A bias
incident adds who was affected and its notification; a security incident adds the principal's
access records (and, for a tampered artifact, the checksums and the version to roll back to).
The files are written by `evidence.write_evidence` with a manifest of their hashes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import msgspec
import orjson

from monitor.aggregates.predictions import group_prefix
from monitor.incidents.evidence import incident_dir, write_evidence
from monitor.incidents.incident import Incident
from monitor.incidents.notify import render_bias_notification, render_notification
from monitor.rules.evaluate import Finding
from monitor.rules.schema import Rule, RuleSet
from monitor.store.catalog import ModelCatalog, ModelView

EVIDENCE_LIST_BOUND = 10_000  # request and subject ids kept per bias incident; the rest are counted
PRETTY = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS


class EvidenceRecorder:
    """Writes the evidence of each incident the evaluator opens (and fills in its scope)."""

    def __init__(
        self,
        catalog: ModelCatalog,
        rules: RuleSet,
        root: Path,
        *,
        contact: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = catalog
        self.rules = rules
        self.root = root
        self.contact = contact
        self.clock = clock

    async def record(self, incident: Incident, rule: Rule, model: ModelView, finding: Finding) -> None:
        """Everything a newly opened incident keeps; sets its scope and `evidence_ref`."""
        if rule.category == "bias":
            await self._impact(incident, model, finding)
        elif rule.category == "security":
            await self._security(incident, finding)
        await self._detection(incident, rule, model, finding)

    async def _detection(self, incident: Incident, rule: Rule, model: ModelView, finding: Finding) -> None:
        """The evidence every incident keeps (docs/incidents.md): window aggregates, the rule and the rules
        file hash, model version and checksum, the newest raw events, Kafka offsets at detection."""
        model_id = incident.model_id
        recent, offsets, deployed = await self.catalog.detection_context(model_id)
        windows = model.windows.get(finding.version or "") or model.access
        window = asdict(windows.window(rule.window_s)) if windows else None
        checksum = next((d["sha256"] for d in deployed if d["version"] == incident.model_version), None)
        incident.evidence_ref = str(incident_dir(self.root, incident.id))
        rules_file = {
            "rule": rule.model_dump(),
            "rules_sha256": self.rules.sha256,
            "rules_files": list(self.rules.sources),
        }
        model_file = {
            "model_id": model_id,
            "version": incident.model_version,
            "sha256": checksum,
            "versions": model.versions,
            "deployments": deployed,
        }
        files = {
            "incident.json": msgspec.json.format(msgspec.json.encode(incident), indent=2),
            "rule.json": orjson.dumps(rules_file, option=PRETTY),
            "window.json": orjson.dumps(
                {"window_s": rule.window_s, "now": self.clock(), "stats": window}, option=PRETTY
            ),
            "model.json": orjson.dumps(model_file, option=PRETTY),
            "recent_events.json": b"[" + b",".join(recent) + b"]",
            "offsets.json": orjson.dumps(offsets, option=PRETTY),
        }
        if rule.category != "bias":  # the bias notification is written with its impact
            files["notification.txt"] = render_notification(incident, contact=self.contact).encode()
        write_evidence(self.root, incident.id, files)

    async def _security(self, incident: Incident, finding: Finding) -> None:
        """Containment evidence: the principal's recent access records and the Kafka offsets that
        bound them; for a tampered artifact, expected and observed checksums and a rollback target."""
        obs = finding.observation
        files: dict[str, bytes] = {}
        model_id = incident.model_id
        if "sha256" in obs:
            integrity = await self._integrity(incident, obs)
            files["integrity.json"] = orjson.dumps(integrity, option=orjson.OPT_INDENT_2)
        who = obs.get("principal") or obs.get("api_key")
        if who:
            records = await self.catalog.recent_access(model_id)
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
        incident.evidence_ref = str(write_evidence(self.root, incident.id, files))

    async def _integrity(self, incident: Incident, obs: dict[str, Any]) -> dict[str, Any]:
        """A tampered artifact: the approved checksums of its version, the unapproved registry event,
        and the version to roll back to (the newest approved deployment of another version, else the
        newest approval of another version); sets the incident's `rollback_to`."""
        model_id, version = incident.model_id, obs["version"]
        approved = await self.catalog.approvals(model_id)
        seen = await self.catalog.unapproved_event(model_id, version, obs["sha256"])
        deployments = await self.catalog.deployments(model_id)
        good = [d for d in deployments if d["approved"] and d["version"] != version]
        by_time = sorted(approved.items(), key=lambda kv: kv[1]["ts"], reverse=True)
        fallback = [k.split("|", 1)[0] for k, _ in by_time if not k.startswith(f"{version}|")]
        incident.rollback_to = good[0]["version"] if good else (fallback[0] if fallback else None)
        integrity = {
            "model_id": model_id,
            "version": version,
            "observed_sha256": obs["sha256"],
            "expected_sha256": sorted(k.split("|", 1)[1] for k in approved if k.startswith(f"{version}|")),
            "unapproved_event": seen,
            "rollback_to": incident.rollback_to,
            "approved_deployments": [d for d in deployments if d["approved"]][:20],
        }
        kept = {k: integrity[k] for k in ("expected_sha256", "rollback_to")}
        incident.observation = {**incident.observation, **kept}
        return integrity

    async def _impact(self, incident: Incident, model: ModelView, finding: Finding) -> None:
        """Who was affected: count them, keep their decision records in the evidence, notify."""
        obs = finding.observation
        version = finding.version or ""
        windows = model.windows[version]
        start = windows.start_of(int(obs["window_s"]))
        unfavourable = int(obs["unfavourable"])
        if obs["metric"] == "disparate_impact" and "change_at" in obs:
            # The detector counted the group's unfavourable decisions since its change point: the
            # people affected are those, however far back the change began.
            start, unfavourable = float(obs["change_at"]), int(obs["bad_since_change"])
        prefix = group_prefix(obs["attribute"], obs["group"])
        kept = await self.catalog.affected(model.model_id, version, prefix, start, windows.now)
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
        incident.evidence_ref = str(incident_dir(self.root, incident.id))
        notification = render_bias_notification(incident, contact=self.contact)
        write_evidence(
            self.root,
            incident.id,
            {
                "affected.json": orjson.dumps(affected_file, option=orjson.OPT_INDENT_2),
                "notification.txt": notification.encode(),
            },
        )
