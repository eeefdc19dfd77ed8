"""Security rules (pure): counts of what the access policy and the registry forbid, per principal.

Security metrics are counts, not rates: one unauthorized download is an incident. A volume rule
compares a principal's (or API key's) amount in the window with its own average for a window of
that length over the 7 days before the current day, and needs an absolute minimum as well, so a
principal who reads 3 files instead of 0 is not an exfiltration. Which access counter each metric
reads, and whom its findings name, is its row in monitor.rules.kinds.
"""

from __future__ import annotations

import math
from typing import Any

from monitor.aggregates.predictions import SEP, unescape
from monitor.aggregates.window import VersionWindows, WindowStats
from monitor.rules.evaluate import Finding
from monitor.rules.kinds import SECURITY_METRICS as SECURITY_METRICS  # re-exported: the security metrics
from monitor.rules.kinds import Subject, kind
from monitor.rules.schema import Rule

REFERENCE_S = 7 * 86_400


def evaluate_security(
    rule: Rule, model_id: str, windows: VersionWindows, *, baseline: WindowStats | None
) -> list[Finding]:
    """A finding for every principal, key or artifact past the rule's threshold (only those)."""
    row = kind(rule.metric)
    assert row.counter is not None and row.subject is not None
    current = windows.window(rule.window_s).security.get(row.counter, {})
    reference = baseline.security.get(row.counter, {}) if baseline else {}
    assert rule.threshold is not None
    findings = []
    for raw_key, amount in sorted(current.items()):
        observation: dict[str, Any] = {
            "metric": rule.metric,
            "window_s": rule.window_s,
            "value": amount,
            "threshold": rule.threshold,
            "baseline": None,
            **_subject(row.subject, raw_key),
        }
        if rule.compare == "ratio_above":
            expected = reference.get(raw_key, 0) * rule.window_s / REFERENCE_S
            ratio = amount / expected if expected else math.inf
            # A key or principal with no history has no "usual" to be a multiple of: a new gateway's
            # key sending its first hour of steady traffic is no attack (the absolute cap rules
            # judge new keys). It fired here before, and its level-2 revoke cut the new gateway off.
            fired = expected > 0 and amount >= rule.min_volume and ratio > rule.threshold
            observation.update(
                baseline=expected, ratio=None if math.isinf(ratio) else ratio, min_volume=rule.min_volume
            )
        else:
            fired = amount > rule.threshold
        observation["test"] = {"method": "count against threshold", "significant": fired}
        if fired:
            group = observation.get("principal") or observation.get("api_key") or raw_key
            if row.subject == "artifact":
                group = f"{observation['version']}@{observation['sha256'][:12]}"
            findings.append(
                Finding(rule.id, model_id, None, group, True, False, rule.severity, rule.level, observation)
            )
    return findings


def _subject(subject: Subject, raw_key: str) -> dict[str, str]:
    if subject == "artifact":
        version, _, sha256 = raw_key.rpartition(SEP)
        return {"version": unescape(version), "sha256": sha256}
    if subject == "api_key":
        return {"api_key": unescape(raw_key)}
    return {"principal": unescape(raw_key)}
