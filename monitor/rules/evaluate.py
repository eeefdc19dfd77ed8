"""Evaluates one rule against one model version's windows (pure: values in, findings out).

Every rate rule goes through the same steps: enough samples or no finding at all; a one-sided test
per ladder step (the base threshold first); the strongest significant step sets severity and level.
A finding also says whether the point estimate is back inside the base threshold, which is what
auto-recovery (hysteresis) counts. Each rate metric's probe is in `PROBES`, keyed by the metric's
name (its row in monitor.rules.kinds says it is evaluated here). The sequential detectors decide
the rules of monitor.rules.questions.SEQUENTIAL_METRICS; for them these probes only give an
incident its window's figures (and decide with `test: none`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor import stats
from monitor.aggregates.window import GroupStats, VersionWindows, WindowStats
from monitor.rules.kinds import kind
from monitor.rules.schema import SEVERITY_RANK, ModelFacts, Rule, Step


@dataclass(frozen=True)
class Finding:
    """What one rule concluded about one model (version, group) at one tick."""

    rule_id: str
    model_id: str
    version: str | None
    group: str | None
    fired: bool
    inside: bool  # the point estimate is on the safe side of the base threshold
    severity: str
    level: int
    observation: dict[str, Any] = field(default_factory=dict)

    @property
    def dedup_key(self) -> str:
        """One open incident per (model, rule, group)."""
        return f"{self.rule_id}|{self.group or ''}"


@dataclass(frozen=True)
class Probe:
    """A metric reduced to a testable form: its value, a test per step threshold, and the
    "inside" check that hysteresis counts."""

    value: float
    samples: int
    baseline: float | None
    test: Callable[[float], stats.TestResult]
    inside: Callable[[float], bool]
    extra: dict[str, Any] = field(default_factory=dict)


def evaluate(
    rule: Rule,
    model_id: str,
    version: str,
    windows: VersionWindows,
    *,
    baseline: WindowStats | None,
    facts: ModelFacts | None,
) -> list[Finding]:
    """Findings of a windowed rule (not `silence`) for one version; empty without enough data."""
    current = windows.window(rule.window_s)
    if kind(rule.metric).evaluation == "gaps":
        return _accuracy_gaps(rule, model_id, version, current, baseline)
    published = facts.published_min_accuracy if facts else None
    if rule.compare == "below_published_minimum" and published is None:
        return []
    probe_fn = PROBES.get(rule.metric)
    if probe_fn is None:
        raise AssertionError(f"metric {rule.metric} has no probe")
    probe = probe_fn(rule, current, windows, baseline, published)
    if probe is None:
        return []
    return [conclude(rule, model_id, version, None, probe, rule.steps(published))]


def evaluate_silence(rule: Rule, model_id: str, last_event_s: float | None, now: float) -> Finding | None:
    """The dead-man's switch: a model active within the rule's window has been silent too long."""
    assert rule.threshold is not None
    if last_event_s is None or last_event_s < now - rule.window_s:
        return None  # never active, or idle long enough that silence is its normal state
    silent_s = max(0.0, now - last_event_s)
    fired = silent_s >= rule.threshold
    observation = {
        "metric": "silence",
        "value": silent_s,
        "threshold": rule.threshold,
        "last_event_s": last_event_s,
        "test": {"method": "dead-man's switch", "significant": fired},
    }
    return Finding(rule.id, model_id, None, None, fired, not fired, rule.severity, rule.level, observation)


# A probe reduces one version's window (and its baseline) to a testable form, or None without enough
# data: (rule, current window, all the version's windows, baseline, the model's published minimum).
ProbeFn = Callable[[Rule, WindowStats, VersionWindows, WindowStats | None, float | None], Probe | None]


def _accuracy_probe(
    rule: Rule,
    cur: WindowStats,
    windows: VersionWindows,
    baseline: WindowStats | None,
    published: float | None,
) -> Probe | None:
    c = rule.confidence
    n, k = cur.labelled, cur.correct
    coverage = cur.label_coverage or 0.0
    if n < rule.min_samples or coverage < (rule.min_label_coverage or 0.0):
        return None
    accuracy = k / n
    extra = {"label_coverage": coverage}
    if rule.compare == "relative_drop":
        if baseline is None or baseline.labelled < rule.min_samples or not baseline.correct:
            return None
        base = baseline.correct / baseline.labelled
        return Probe(
            (base - accuracy) / base,
            n,
            base,
            lambda t: _rate(rule, k, n, base * (1 - t), c, "below"),
            lambda t: (base - accuracy) / base <= t,
            {**extra, "accuracy": accuracy, "baseline_samples": baseline.labelled},
        )
    return Probe(
        accuracy,
        n,
        published,
        lambda t: _rate(rule, k, n, t, c, "below"),
        lambda t: accuracy >= t,
        extra,
    )


def _error_rate_probe(
    rule: Rule,
    cur: WindowStats,
    windows: VersionWindows,
    baseline: WindowStats | None,
    published: float | None,
) -> Probe | None:
    return _above(rule, cur.errors, cur.count)


def _flag_rate_probe(
    rule: Rule,
    cur: WindowStats,
    windows: VersionWindows,
    baseline: WindowStats | None,
    published: float | None,
) -> Probe | None:
    assert rule.flag is not None
    return _above(rule, cur.flags.get(rule.flag, 0), cur.count)


def _unserved_probe(
    rule: Rule,
    cur: WindowStats,
    windows: VersionWindows,
    baseline: WindowStats | None,
    published: float | None,
) -> Probe | None:
    # Users with a request in the window who got no successful prediction in it (a user with
    # one failed request among twenty good ones was served); see monitor.aggregates.window.unserved.
    users, unserved = windows.users.get(rule.window_s, (0, 0))
    return _above(rule, min(unserved, users), users)


def _latency_probe(
    rule: Rule,
    cur: WindowStats,
    windows: VersionWindows,
    baseline: WindowStats | None,
    published: float | None,
) -> Probe | None:
    return _latency(rule, cur, baseline)


def _above(rule: Rule, k: int, n: int) -> Probe | None:
    if n < rule.min_samples:
        return None
    rate = k / n
    return Probe(
        rate,
        n,
        None,
        lambda t: _rate(rule, k, n, t, rule.confidence, "above"),
        lambda t: rate <= t,
    )


def _latency(rule: Rule, cur: WindowStats, baseline: WindowStats | None) -> Probe | None:
    assert rule.quantile is not None
    q, n = rule.quantile, cur.latency_count
    value = cur.latency_quantile_s(q)
    if n < rule.min_samples or value is None:
        return None
    scale, base = 1.0, None
    if rule.compare == "ratio_above":
        if baseline is None or baseline.latency_count < rule.min_samples:
            return None
        base = baseline.latency_quantile_s(q)
        if not base:
            return None
        scale = base
    # "the q-quantile exceeds X" ⟺ "more than 1−q of requests are slower than X": a rate test.
    return Probe(
        value / scale,
        n,
        base,
        lambda t: _rate(rule, cur.latency_above(t * scale), n, 1 - q, rule.confidence, "above"),
        lambda t: value / scale <= t,
        {"quantile": q, "latency_s": value},
    )


# The probe of every metric evaluated as "rate" (monitor.rules.kinds): a new rate metric adds its here.
PROBES: dict[str, ProbeFn] = {
    "accuracy": _accuracy_probe,
    "error_rate": _error_rate_probe,
    "latency": _latency_probe,
    "unserved_users": _unserved_probe,
    "flag_rate": _flag_rate_probe,
}


def _rate(rule: Rule, k: int, n: int, p0: float, confidence: float, side: str) -> stats.TestResult:
    if rule.test == "none":
        estimate = k / n
        crossed = estimate > p0 if side == "above" else estimate < p0
        return stats.TestResult("point estimate", estimate, math.nan, crossed, (estimate, estimate), n)
    if side == "above":
        return stats.rate_above(k, n, p0, confidence)
    return stats.rate_below(k, n, p0, confidence)


def conclude(
    rule: Rule, model_id: str, version: str, group: str | None, probe: Probe, steps: tuple[Step, ...]
) -> Finding:
    """Test every step; the base step decides whether it fires, the strongest significant one how hard.

    Every test is one-sided, so an estimate on the safe side of the base threshold cannot be
    significant at any step (its p-value is at least about one half): it is not tested at all,
    which spares the statistics on the many healthy models of a tick. Its p-value is recorded as
    1, which leaves a Benjamini–Hochberg family's decisions unchanged (a p-value of one half or
    more is never rejected there, and raising it does not move any smaller one's rank).
    """
    if probe.inside(steps[0].threshold):
        results = [(steps[0], _untested(probe))]
    else:
        results = [(step, probe.test(step.threshold)) for step in steps]
    significant = [(step, result) for step, result in results if result.significant]
    base_step, base_result = results[0]
    # Stronger steps are nested inside the base one, so the base test decides whether it fires.
    fired = base_result.significant
    step, result = (
        max(significant, key=lambda sr: (sr[0].level, SEVERITY_RANK[sr[0].severity]))
        if fired
        else (base_step, base_result)
    )
    observation = {
        "metric": rule.metric,
        "window_s": rule.window_s,
        "value": probe.value,
        "baseline": probe.baseline,
        "threshold": base_step.threshold,
        "step_threshold": step.threshold,
        "samples": probe.samples,
        "test": result.as_dict(),
        "confidence": rule.confidence,
        **probe.extra,
    }
    return Finding(
        rule.id,
        model_id,
        version,
        group,
        fired,
        probe.inside(base_step.threshold),
        step.severity,
        step.level,
        observation,
    )


def _untested(probe: Probe) -> stats.TestResult:
    return stats.TestResult(
        "not tested: the estimate is inside the threshold",
        probe.value,
        1.0,
        False,
        (math.nan, math.nan),
        probe.samples,
    )


def _accuracy_gaps(
    rule: Rule, model_id: str, version: str, cur: WindowStats, baseline: WindowStats | None
) -> list[Finding]:
    findings = []
    attributes = [rule.attribute] if rule.attribute else sorted(cur.groups)
    for attr in attributes:
        groups = {value: g for value, g in cur.groups.get(attr, {}).items() if g.labelled >= rule.min_samples}
        if len(groups) < 2:
            continue
        ranked = sorted(groups.items(), key=lambda item: _accuracy(item[1]))
        (worst_name, worst), (best_name, best) = ranked[0], ranked[-1]
        gap = _accuracy(best) - _accuracy(worst)
        pairs = len(groups) * (len(groups) - 1) // 2
        ref_gap = 0.0
        if rule.compare == "widening":
            ref = baseline.groups.get(attr, {}) if baseline else {}
            ref_best, ref_worst = ref.get(best_name), ref.get(worst_name)
            if not ref_best or not ref_worst or min(ref_best.labelled, ref_worst.labelled) < rule.min_samples:
                continue
            ref_gap = _accuracy(ref_best) - _accuracy(ref_worst)

        def test(
            t: float, b: GroupStats = best, w: GroupStats = worst, r: float = ref_gap, m: int = pairs
        ) -> stats.TestResult:
            return stats.difference_above(
                b.correct, b.labelled, w.correct, w.labelled, r + t, rule.confidence, comparisons=m
            )

        def inside(t: float, widened: float = gap - ref_gap) -> bool:
            return widened <= t

        probe = Probe(
            gap - ref_gap,
            best.labelled + worst.labelled,
            ref_gap if rule.compare == "widening" else None,
            test,
            inside,
            {"attribute": attr, "best": best_name, "worst": worst_name, "gap": gap},
        )
        findings.append(conclude(rule, model_id, version, attr, probe, rule.steps()))
    return findings


def _accuracy(group: GroupStats) -> float:
    return group.correct / group.labelled if group.labelled else 0.0
