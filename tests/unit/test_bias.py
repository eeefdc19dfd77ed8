"""Bias rules on hand-made windows: reference groups, proxies, minimum sizes, shifts."""

from __future__ import annotations

from collections import Counter

import pytest

from monitor import stats
from monitor.aggregates.predictions import group_field
from monitor.aggregates.window import VersionWindows
from monitor.rules.bias import evaluate_bias
from monitor.rules.fairness import Fairness, ProtectedAttribute, ProxyAttribute
from monitor.rules.loader import default_rules_path, load_rules

RULES = load_rules(default_rules_path())
FAIRNESS = Fairness(
    protected={"sex": ProtectedAttribute(reference="M")}, proxies={"zip3": ProxyAttribute(proxy_for="race")}
)


def groups(attr: str, spec: dict[str, tuple[int, int]]) -> Counter[str]:
    """{value: (decisions, favourable)} as bucket counters."""
    out: Counter[str] = Counter()
    for value, (dec, fav) in spec.items():
        out[group_field(attr, value, "dec")] += dec
        out[group_field(attr, value, "pos")] += fav
        out[group_field(attr, value, "n")] += dec
    return out


def windows(current: Counter[str], reference: Counter[str] | None = None) -> VersionWindows:
    hours = [current] + [Counter() for _ in range(14 * 24)]
    if reference is not None:
        hours[30] = reference
    return VersionWindows(0.0, [current] + [Counter() for _ in range(59)], hours)


def test_declared_reference_group_is_used_even_when_not_the_most_favoured() -> None:
    rule = RULES.by_id("disparate-impact")
    w = windows(groups("sex", {"F": (1000, 700), "M": (1000, 400), "X": (1000, 200)}))
    found = {f.group: f for f in evaluate_bias(rule, "m", "1", w, baseline=None, fairness=FAIRNESS)}
    assert set(found) == {"sex=F", "sex=X"}  # M is the declared reference
    assert found["sex=X"].observation["value"] == pytest.approx(0.5) and found["sex=X"].fired
    assert not found["sex=F"].fired and found["sex=F"].inside


def test_groups_below_the_minimum_size_are_not_tested() -> None:
    rule = RULES.by_id("disparate-impact")
    w = windows(groups("sex", {"F": (99, 10), "M": (1000, 600)}))
    assert evaluate_bias(rule, "m", "1", w, baseline=None, fairness=FAIRNESS) == []


def test_proxies_are_tested_and_marked() -> None:
    rule = RULES.by_id("disparate-impact")
    w = windows(groups("zip3", {"941": (2000, 1200), "606": (2000, 700)}))
    [finding] = evaluate_bias(rule, "m", "1", w, baseline=None, fairness=FAIRNESS)
    assert finding.group == "zip3=606" and finding.fired
    assert finding.observation["proxy"] is True and finding.observation["proxy_for"] == "race"
    assert finding.observation["reference_group"] == "941"  # most favoured: no reference declared


def test_a_group_shift_against_its_own_baseline() -> None:
    rule = RULES.by_id("group-shift")
    before = groups("sex", {"F": (2000, 1200), "M": (2000, 1200)})
    after = groups("sex", {"F": (2000, 800), "M": (2000, 1180)})
    w = windows(after, reference=before)
    found = {f.group: f for f in evaluate_bias(rule, "m", "1", w, baseline=w.reference(), fairness=FAIRNESS)}
    assert found["sex=F"].fired and found["sex=F"].observation["value"] == pytest.approx(-0.19)
    steady = windows(groups("sex", {"F": (2000, 1180), "M": (2000, 1190)}), reference=before)
    assert not any(
        f.fired for f in evaluate_bias(rule, "m", "1", steady, baseline=steady.reference(), fairness=FAIRNESS)
    )


def test_ratio_test_and_interval() -> None:
    result = stats.ratio_below(400, 1000, 600, 1000, 0.8, 0.99)
    assert result.significant and result.estimate == pytest.approx(2 / 3)
    assert result.interval[0] < 2 / 3 < result.interval[1] < 0.8
    assert not stats.ratio_below(40, 100, 60, 100, 0.8, 0.99).significant


def test_benjamini_hochberg_controls_many_tests() -> None:
    adjusted = stats.benjamini_hochberg([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    assert adjusted[0] == pytest.approx(0.01)
    assert all(a >= p for a, p in zip(adjusted, [0.001, 0.008, 0.039], strict=False))
    assert stats.benjamini_hochberg([]) == []
