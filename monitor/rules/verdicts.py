"""A sequential rule's finding from its detector rows (pure): fired, severity, recovery, and the
observation an incident shows, words first.

The base step's rows decide whether the rule fires; each stronger step has its own rows, so a
sustained change reaches a step's severity as soon as that step's detector has the evidence,
whatever healthy history a display window still holds. The observation names the detector, its
statistic and bar, the estimated change point, the rate of bad events since then with its
anytime-valid interval (monitor.detect.intervals.confidence_sequence) and the boundary it was
tested against. Fields a window probe computes for display (the window's value, a bias rule's
groups) come in `display` and are kept unless the detector states them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from monitor.detect.intervals import confidence_sequence
from monitor.rules.detectors import DetectorSet, RowState
from monitor.rules.evaluate import Finding
from monitor.rules.questions import Question
from monitor.rules.schema import SEVERITY_RANK, ModelFacts, Rule

METHOD = "CUSUM of Bernoulli likelihood ratios (Page), budget split over ticks, rows and alternatives"
# What the bad events of each metric are, in words.
BAD_EVENTS = {
    "error_rate": "requests failed",
    "flag_rate": "outputs were flagged {flag}",
    "accuracy": "labelled predictions were wrong",
    "latency": "requests were slower than {cut}",
    "disparate_impact": "decisions for {group} were unfavourable",
    "fnr_gap": "deserving members of {group} were refused",
    "group_shift": "decisions for {group} were {side}",
}


def finding(
    detectors: DetectorSet,
    model_id: str,
    rule: Rule,
    states: Sequence[RowState],
    facts: ModelFacts | None,
    display: Mapping[str, Any] | None = None,
) -> Finding:
    """The finding of one (model, version, group) of a rule from its rows' verdicts."""
    steps = rule.steps(facts.published_min_accuracy if facts else None)
    base = [s for s in states if s.question.step == 0]
    fired = any(s.alarm for s in base)
    alarmed = [s for s in states if s.alarm] if fired else []

    def strength(s: RowState) -> tuple[int, int, float]:
        step = steps[s.question.step]
        return (step.level, SEVERITY_RANK[step.severity], detectors.bank.stat[s.row].max())

    shown = max(alarmed, key=strength) if alarmed else max(base, key=strength)
    step = steps[shown.question.step] if fired else steps[0]
    q = shown.question
    p0 = detectors.p0(shown.row)
    stat, odds_ratio, start, bad, total = detectors.bank.row(shown.row, p0)
    low, high = confidence_sequence(bad, total, 1.0 - rule.confidence) if total > 0 else (math.nan, math.nan)
    boundary = detectors.boundaries[shown.row]
    rate = bad / total if total > 0 else math.nan
    observation: dict[str, Any] = {**(display or {})}
    observation.update(
        {
            "metric": rule.metric,
            "window_s": rule.window_s,
            "threshold": steps[0].threshold,
            "step_threshold": step.threshold,
            "samples": int(total),
            "confidence": rule.confidence,
            "change_at": start,
            "events_since_change": int(total),
            "bad_since_change": int(bad),
            "rate_since_change": rate,
            "rate_interval": [low, high],
            "rate_boundary": p0,
            "false_alarm_every_s": rule.false_alarm_every_s,
            "test": {
                "method": METHOD,
                "statistic": stat,
                "boundary": detectors.cap(shown.row),
                "alternative_odds_ratio": odds_ratio,
                "significant": fired,
                "estimate": rate,
                "interval": [low, high],
                "samples": int(total),
            },
            **(boundary.basis or {}),
        }
    )
    if boundary.cut_s is not None:
        observation["latency_cut_s"] = boundary.cut_s
    if q.group is not None:  # what the bias notification names, when no window had the group
        observation.setdefault("attribute", q.attribute)
        observation.setdefault("group", q.value)
        if rule.metric == "fnr_gap":
            observation.setdefault("false_negative_rate", rate)
            observation.setdefault("actual_positives", int(total))
        else:
            favourable = rate if q.side == "up" and rule.metric == "group_shift" else 1.0 - rate
            observation.setdefault("favourable_rate", favourable)
            observation.setdefault("decisions", int(total))
            observation.setdefault("unfavourable", int(total - bad) if q.side == "up" else int(bad))
            observation.setdefault("reference_rate", math.nan)
            observation.setdefault("reference_group", "")
    # The value is the detector's estimate since the change (the window's stays as window_value):
    # a window still holding the healthy past understates a change the detector has seen.
    if "value" in observation:
        observation["window_value"] = observation["value"]
    if total > 0 and rule.metric == "disparate_impact":
        observation.update(favourable_rate=1.0 - rate, unfavourable=int(bad), decisions=int(total))
    observation["value"] = (
        natural_value(rule, q, rate, observation) if total > 0 else observation.get("value")
    )
    observation["explanation"] = explain(rule, q, observation, fired)
    return Finding(
        rule.id,
        model_id,
        q.version,
        q.group,
        fired,
        all(s.inside for s in base),
        step.severity,
        step.level,
        observation,
    )


def natural_value(rule: Rule, q: Question, rate: float, obs: Mapping[str, Any]) -> float:
    """The rule's own quantity from the rate of bad events since the change (no window at hand)."""
    metric = rule.metric
    if metric == "accuracy":
        accuracy = 1.0 - rate
        if rule.compare == "relative_drop" and obs.get("baseline"):
            base = float(obs["baseline"])
            return (base - accuracy) / base
        return accuracy
    if metric == "disparate_impact" and obs.get("reference_rate"):
        return (1.0 - rate) / float(obs["reference_rate"])
    if metric == "fnr_gap" and "reference_false_negative_rate" in obs:
        return rate - float(obs["reference_false_negative_rate"])
    if metric == "group_shift" and "reference_rate" in obs:
        favourable = rate if q.side == "up" else 1.0 - rate
        return favourable - float(obs["reference_rate"]) - float(obs.get("others_shift", 0.0))
    return rate


def explain(rule: Rule, q: Question, obs: Mapping[str, Any], fired: bool) -> str:
    """One plain sentence: since when, how many of how many, against what."""
    total, bad = obs["events_since_change"], obs["bad_since_change"]
    if not total:
        return "No events since the detector last stood at zero."
    words = BAD_EVENTS.get(rule.metric, "events were bad").format(
        flag=rule.flag or "",
        cut=f"{obs.get('latency_cut_s', 0.0):.3g} s",
        group=q.group or "",
        side="favourable" if q.side == "up" else "unfavourable",
    )
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(obs["change_at"])))
    low, high = obs["rate_interval"]
    conf = f"{obs['confidence']:.0%}"
    verdict = (
        "enough evidence that the rate is past its boundary"
        if fired
        else "not (or no longer) enough evidence that the rate is past its boundary"
    )
    return (
        f"Since {since}, {bad:,} of {total:,} {words} ({obs['rate_since_change']:.2%}; {conf} "
        f"anytime-valid interval {low:.2%} to {high:.2%}), against a boundary of "
        f"{obs['rate_boundary']:.2%}: {verdict}."
    )
