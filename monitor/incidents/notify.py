"""Notifications rendered from the playbook's communication templates (Jinja2, strict)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from monitor.control import LEVELS
from monitor.incidents.incident import Incident

_env = Environment(
    loader=PackageLoader("monitor", "templates"),
    undefined=StrictUndefined,  # a missing figure is an error, never an empty hole in the text
    keep_trailing_newline=True,
    autoescape=False,  # plain-text messages
)

ROUTING = {
    0: "normal automated operation with random human sampling",
    1: "all decisions logged and 15 % sampled for human review",
    2: "decisions below 0.80 confidence go to human review",
    3: "every decision is reviewed by a human; the AI only recommends",
    4: "the AI is paused; people decide everything",
}
# The playbook's bias-incident timeline, counted from detection.
NEXT_STEPS_H = {"root_cause": 4, "affected": 6, "plan": 12, "execution": 48}


def _when(start: float, hours: int) -> str:
    moment = datetime.fromtimestamp(start, UTC) + timedelta(hours=hours)
    return f"within {hours} hours (by {moment:%Y-%m-%d %H:%M} UTC)"


def _duration(seconds: int) -> str:
    if seconds % 86_400 == 0:
        days = seconds // 86_400
        return f"{days} day{'s' if days > 1 else ''}"
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours > 1 else ''}"
    return f"{seconds // 60} minutes"


def render_bias_notification(incident: Incident, *, contact: str) -> str:
    """The internal stakeholder notification of a bias incident, with the incident's real figures."""
    obs = incident.observation
    test = obs["test"]
    metric = obs["metric"]
    group = f"{obs['attribute']}={obs['group']}"
    if metric == "disparate_impact":
        kind = "Potential discrimination (disparate impact)"
        what = (
            f"The favourable-decision rate of {group} is {obs['favourable_rate']:.1%} against "
            f"{obs['reference_rate']:.1%} for the reference group "
            f"{obs['attribute']}={obs['reference_group']}: "
            f"a disparate impact ratio of {obs['value']:.2f}, below the {obs['threshold']:.2f} (80 %) rule."
        )
    elif metric == "fnr_gap":
        kind = "Potential discrimination (false-negative rate gap)"
        what = (
            f"Members of {group} who deserved a favourable decision were refused "
            f"{obs['false_negative_rate']:.1%} "
            f"of the time, against {obs['reference_false_negative_rate']:.1%} for "
            f"{obs['attribute']}={obs['reference_group']}: a gap of {obs['value'] * 100:.1f} points "
            f"(threshold {obs['threshold'] * 100:.0f})."
        )
    else:
        kind = "Potential discrimination (sudden shift in group treatment)"
        what = (
            f"The favourable-decision rate of {group} moved from {obs['reference_rate']:.1%} to "
            f"{obs['favourable_rate']:.1%} while the other groups moved "
            f"{obs['others_shift'] * 100:+.1f} points: "
            f"a shift of {obs['value'] * 100:+.1f} points beyond theirs "
            f"(threshold {obs['threshold'] * 100:.0f})."
        )
    if obs.get("proxy"):
        stands_for = obs.get("proxy_for") or "a protected characteristic"
        kind = f"Possible proxy discrimination via {obs['attribute']} (may stand in for {stands_for})"
        what += f" {obs['attribute']} is declared a possible proxy for {stands_for}."
    level = incident.level
    status = (
        "All new decisions of this system are being reviewed by humans. "
        "Automated operation is suspended pending investigation."
        if level >= 3
        else (
            f"Routing is at level {level} ({LEVELS[level].name}); "
            "the monitor continues to watch the fairness metrics."
        )
    )
    return _env.get_template("bias_internal.txt.j2").render(
        incident=incident,
        obs=obs,
        test=test,
        scope=incident.scope,
        kind=kind,
        what_happened=what,
        window=_duration(int(obs["window_s"])),
        # A detector's incident counts from its change point; a windowed test's over its window.
        period=(
            f"since {datetime.fromtimestamp(float(obs['change_at']), UTC):%Y-%m-%d %H:%M} UTC"
            if "change_at" in obs and obs["metric"] == "disparate_impact"
            else f"in the past {_duration(int(obs['window_s']))}"
        ),
        budget=_duration(int(obs.get("false_alarm_every_s", 0)) or 86_400),
        opened=f"{datetime.fromtimestamp(incident.opened_at, UTC):%Y-%m-%d %H:%M:%S} UTC",
        level_name=LEVELS[level].name,
        routing=ROUTING[level],
        evidence=incident.evidence_ref or "in the incident record",
        deadlines={k: _when(incident.opened_at, h) for k, h in NEXT_STEPS_H.items()},
        status=status,
        contact=contact,
    )


# The title of each incident category in a notification (its "Type:" line and subject).
CATEGORY_TITLES = {
    "performance": "Performance degradation",
    "availability": "Availability incident",
    "output_quality": "Output quality incident",
    "security": "Security and data incident",
    "bias": "Potential discrimination",
}
# The playbook's immediate actions for performance incidents (0–30 minutes), from detection.
FIRST_STEPS_MIN = {"verify": 30, "impact": 30, "contain": 30}


def detector_line(obs: dict[str, Any]) -> str:
    """What a detector's evidence means, for people: how much of the bar it reached, and the
    false-alarm budget that bar keeps."""
    test = obs["test"]
    budget = _duration(int(obs.get("false_alarm_every_s", 0)) or 86_400)
    return (
        f"Detector: {test['method']}; evidence {test['statistic']:.1f} of the {test['boundary']:.1f} needed, "
        f"a bar that keeps this rule's false alarms to one every {budget} on average across the fleet."
    )


def render_notification(incident: Incident, *, contact: str) -> str:
    """The internal stakeholder notification of any incident (bias has its own template)."""
    if incident.category == "bias":
        return render_bias_notification(incident, contact=contact)
    obs = incident.observation
    test = obs.get("test", {})
    if "statistic" in test:  # a sequential detector
        test_line = f"{obs.get('explanation', '')} {detector_line(obs)}".strip()
    elif "p_value" in test:
        test_line = (
            f"{test['method']}, p = {test['p_value']:.2g} at {obs.get('confidence', 0.99):.0%} confidence"
        )
    else:
        test_line = str(test.get("method", "threshold check"))
    level = incident.level
    return _env.get_template("incident_internal.txt.j2").render(
        incident=incident,
        obs={
            "value": obs.get("value"),
            "threshold": obs.get("threshold"),
            "baseline": obs.get("baseline"),
            "samples": obs.get("samples"),
        },
        kind=CATEGORY_TITLES.get(incident.category, incident.category),
        window=_duration(int(obs.get("window_s", 0)) or 60),
        test_line=test_line,
        opened=f"{datetime.fromtimestamp(incident.opened_at, UTC):%Y-%m-%d %H:%M:%S} UTC",
        level_name=LEVELS[level].name,
        routing=ROUTING[level],
        evidence=incident.evidence_ref or "in the incident record",
        deadlines={
            k: f"within {m} minutes (by {datetime.fromtimestamp(incident.opened_at + m * 60, UTC):%H:%M} UTC)"
            for k, m in FIRST_STEPS_MIN.items()
        },
        status=(
            "The AI is paused; people decide everything."
            if level == 4
            else f"Routing is at level {level} ({LEVELS[level].name}); the monitor keeps watching."
        ),
        contact=contact,
    )
