"""Statistical tests, rule evaluation on hand-made windows, escalation levels and incident hysteresis."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from monitor import stats
from monitor.aggregates.predictions import group_field
from monitor.aggregates.window import VersionWindows
from monitor.control import LEVELS, Cause, build_message, target_level
from monitor.incidents.incident import open_incident, refire, settle
from monitor.rules.evaluate import evaluate, evaluate_silence
from monitor.rules.loader import default_rules_path, load_rules

RULES = load_rules(default_rules_path())


def windows(
    minutes: Counter[str] | None = None,
    hours: Counter[str] | None = None,
    reference: Counter[str] | None = None,
) -> VersionWindows:
    hour_list = [hours or Counter()] + [Counter() for _ in range(14 * 24)]
    if reference is not None:
        hour_list[30] = reference
    return VersionWindows(0.0, [minutes or Counter()] + [Counter() for _ in range(59)], hour_list)


@pytest.mark.parametrize(
    ("k", "n", "threshold", "significant"),
    [
        (3, 8, 0.2, False),
        (30, 1000, 0.01, True),
        (10, 1000, 0.01, False),
        (12, 1000, 0.01, False),
        (1875, 5000, 0.2, True),
    ],
)
def test_rate_above(k: int, n: int, threshold: float, significant: bool) -> None:
    result = stats.rate_above(k, n, threshold, 0.99)
    assert result.significant is significant
    assert result.interval[0] <= k / n <= result.interval[1]


def test_difference_above_needs_samples_on_both_sides() -> None:
    assert stats.difference_above(960, 1000, 840, 1000, 0.05, 0.99).significant
    assert not stats.difference_above(24, 25, 21, 25, 0.05, 0.99).significant
    with pytest.raises(ValueError):
        stats.difference_above(1, 0, 1, 1, 0.0, 0.99)


@pytest.mark.parametrize(
    ("errors", "n", "severity", "level"),
    [
        (3, 8, None, None),
        (30, 1000, "MEDIUM", 1),
        (90, 1000, "HIGH", 2),
        (1875, 5000, "CRITICAL", 4),
        (10, 1000, None, None),
    ],
)
def test_error_rate_ladder(errors: int, n: int, severity: str | None, level: int | None) -> None:
    rule = RULES.by_id("error-rate")
    found = evaluate(
        rule, "m", "1", windows(minutes=Counter({"n": n, "err": errors})), baseline=None, facts=None
    )
    if n < rule.min_samples:
        assert found == []
        return
    [finding] = found
    assert finding.fired is (severity is not None)
    if severity:
        assert (finding.severity, finding.level) == (severity, level)


def test_accuracy_waits_for_label_coverage() -> None:
    rule = RULES.by_id("accuracy-drop-24h")
    reference = Counter({"n": 10_000, "lab": 5000, "cor": 4500})
    sparse = Counter({"n": 100_000, "lab": 1000, "cor": 700})  # 1 % labelled: below the 5 % minimum
    dense = Counter({"n": 10_000, "lab": 1000, "cor": 700})
    base = windows(reference=reference).reference()
    assert evaluate(rule, "m", "1", windows(hours=sparse), baseline=base, facts=None) == []
    [finding] = evaluate(rule, "m", "1", windows(hours=dense), baseline=base, facts=None)
    assert finding.fired and finding.severity == "CRITICAL"
    assert finding.observation["baseline"] == pytest.approx(0.9)
    assert finding.observation["value"] == pytest.approx((0.9 - 0.7) / 0.9)


def test_gap_widening_names_the_attribute() -> None:
    rule = RULES.by_id("accuracy-gap-widening")
    ref = Counter({group_field("sex", g, s): v for g in "FM" for s, v in (("lab", 2000), ("cor", 1800))})
    now = Counter(
        {
            group_field("sex", "F", "lab"): 2000,
            group_field("sex", "F", "cor"): 1920,
            group_field("sex", "M", "lab"): 2000,
            group_field("sex", "M", "cor"): 1680,
        }
    )
    base = windows(reference=ref).reference()
    [finding] = evaluate(rule, "m", "1", windows(hours=now), baseline=base, facts=None)
    assert finding.fired and finding.group == "sex"
    assert finding.observation["best"] == "F" and finding.observation["worst"] == "M"


@pytest.mark.parametrize(("silent_min", "fired"), [(29, False), (30, True), (60 * 25, None)])
def test_silence(silent_min: int, fired: bool | None) -> None:
    finding = evaluate_silence(RULES.by_id("downtime"), "m", 0.0, silent_min * 60.0)
    assert (finding.fired if finding else None) is fired


def test_target_level_is_the_maximum_of_incidents_and_override() -> None:
    causes = [Cause("a", "r", "MEDIUM", 1, "1", False), Cause("b", "r", "HIGH", 2, "1", False)]
    assert target_level(causes, None) == 2
    assert target_level(causes, 4) == 4
    assert target_level([], None) == 0
    message = build_message("m", 7, 2, causes, override=None, rollback_to=None, issued_at=1.0)
    assert message.mode == "human_review" and message.review_below_confidence == 0.80
    assert message.incident_ids == ["b", "a"] and "r HIGH" in message.reason
    assert [LEVELS[level].mode for level in range(5)] == [
        "auto",
        "auto",
        "human_review",
        "human_review",
        "paused",
    ]


def test_hysteresis_and_no_auto_recovery_from_critical() -> None:
    rule = RULES.by_id("error-rate")
    bad = evaluate(
        rule, "m", "1", windows(minutes=Counter({"n": 1000, "err": 90})), baseline=None, facts=None
    )[0]
    good = evaluate(
        rule, "m", "1", windows(minutes=Counter({"n": 1000, "err": 2})), baseline=None, facts=None
    )[0]
    incident = open_incident(rule, bad, 0.0)
    assert not settle(incident, good, rule.hold_s, 100.0)
    assert not settle(incident, good, rule.hold_s, 100.0 + rule.hold_s - 1)
    assert refire(incident, bad, 200.0) is False and incident.clear_since is None
    assert not settle(incident, good, rule.hold_s, 300.0)
    assert settle(incident, good, rule.hold_s, 300.0 + rule.hold_s)
    assert incident.status == "resolved" and incident.outbox == ["opened", "resolved"]
    critical = evaluate(
        rule, "m", "1", windows(minutes=Counter({"n": 5000, "err": 1875})), baseline=None, facts=None
    )[0]
    stuck = open_incident(rule, critical, 0.0)
    assert not settle(stuck, good, rule.hold_s, 10 * rule.hold_s) and stuck.status == "open"


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 5000),
    data=st.data(),
    threshold=st.floats(0.0, 1.0),
    confidence=st.sampled_from([0.9, 0.95, 0.99, 0.999]),
)
def test_binomial_tests_agree_with_scipy_binomtest(
    n: int, data: st.DataObject, threshold: float, confidence: float
) -> None:
    k = data.draw(st.integers(0, n))
    for alternative, ours in (("greater", stats.rate_above), ("less", stats.rate_below)):
        reference = scipy_stats.binomtest(k, n, threshold, alternative=alternative)
        ci = reference.proportion_ci(confidence_level=confidence, method="exact")
        result = ours(k, n, threshold, confidence)
        assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-12)
        assert result.interval == pytest.approx((ci.low, ci.high), rel=1e-7, abs=1e-9)
        assert result.significant == (reference.pvalue < 1 - confidence)
