"""Security rules (pure): counts of what the access policy and the registry forbid, per principal.

Security metrics are counts, not rates: one unauthorized download is an incident. A volume rule
compares a principal's (or API key's) amount in the window with its own average for a window of
that length over the 7 days before the current day, and needs an absolute minimum as well, so a
principal who reads 3 files instead of 0 is not an exfiltration.
"""

from __future__ import annotations

import math
from typing import Any

from monitor.aggregates.access import (
    DENIED,
    NEW_PRINCIPAL,
    NEW_SOURCE_PRIVILEGED,
    OFF_HOURS,
    QUERIES,
    TAMPERED,
    TRAINING_BYTES,
    VIOLATIONS,
)
from monitor.aggregates.predictions import SEP, unescape
from monitor.aggregates.window import VersionWindows, WindowStats
from monitor.rules.evaluate import Finding
from monitor.rules.schema import Rule

REFERENCE_S = 7 * 86_400
KIND = {
    "policy_violations": VIOLATIONS,
    "off_hours_access": OFF_HOURS,
    "new_principal_access": NEW_PRINCIPAL,
    "access_volume": TRAINING_BYTES,
    "unapproved_artifacts": TAMPERED,
    "denied_burst": DENIED,
    "new_source_privileged": NEW_SOURCE_PRIVILEGED,
    "query_volume": QUERIES,
}
SECURITY_METRICS = frozenset(KIND)


def evaluate_security(
    rule: Rule, model_id: str, windows: VersionWindows, *, baseline: WindowStats | None
) -> list[Finding]:
    """A finding for every principal, key or artifact past the rule's threshold (only those)."""
    kind = KIND[rule.metric]
    current = windows.window(rule.window_s).security.get(kind, {})
    reference = baseline.security.get(kind, {}) if baseline else {}
    assert rule.threshold is not None
    findings = []
    for raw_key, amount in sorted(current.items()):
        observation: dict[str, Any] = {
            "metric": rule.metric,
            "window_s": rule.window_s,
            "value": amount,
            "threshold": rule.threshold,
            "baseline": None,
            **_subject(rule.metric, raw_key),
        }
        if rule.compare == "ratio_above":
            expected = reference.get(raw_key, 0) * rule.window_s / REFERENCE_S
            ratio = amount / expected if expected else math.inf
            fired = amount >= rule.min_volume and ratio > rule.threshold
            observation.update(baseline=expected, ratio=None if math.isinf(ratio) else ratio,
                               min_volume=rule.min_volume)
        else:
            fired = amount > rule.threshold
        observation["test"] = {"method": "count against threshold", "significant": fired}
        if fired:
            group = observation.get("principal") or observation.get("api_key") or raw_key
            if rule.metric == "unapproved_artifacts":
                group = f"{observation['version']}@{observation['sha256'][:12]}"
            findings.append(
                Finding(rule.id, model_id, None, group, True, False, rule.severity, rule.level, observation)
            )
    return findings


def _subject(metric: str, raw_key: str) -> dict[str, str]:
    if metric == "unapproved_artifacts":
        version, _, sha256 = raw_key.rpartition(SEP)
        return {"version": unescape(version), "sha256": sha256}
    if metric == "query_volume":
        return {"api_key": unescape(raw_key)}
    return {"principal": unescape(raw_key)}
