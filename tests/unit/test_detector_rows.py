"""Detector rows of the default rules: boundaries re-stated from data once per rule (shared bounds)
equal the boundaries stated row by row, and equal the Clopper–Pearson bounds they are made of."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from monitor.aggregates.window import GroupStats, WindowStats
from monitor.rules.loader import default_rules_path, load_rules
from monitor.rules.questions import Memo, estimated_boundary, questions
from monitor.rules.schema import RuleSet


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rules(default_rules_path())


def _groups(scale: int) -> dict[str, dict[str, GroupStats]]:
    """Twelve zip3 groups and two sexes with different favourable rates and false negatives."""
    zips = {
        f"9{i:02d}": GroupStats(
            decisions=scale * (10 + i),
            favourable=scale * (6 + i // 2),
            actual_positive=scale * (5 + i // 3),
            false_negative=scale * (i % 3),
        )
        for i in range(12)
    }
    sexes = {
        "F": GroupStats(
            decisions=40 * scale, favourable=22 * scale, actual_positive=20 * scale, false_negative=scale
        ),
        "M": GroupStats(
            decisions=50 * scale, favourable=31 * scale, actual_positive=25 * scale, false_negative=2 * scale
        ),
    }
    return {"zip3": zips, "sex": sexes}


def _window(scale: int) -> WindowStats:
    return WindowStats(
        count=500 * scale,
        labelled=400 * scale,
        correct=360 * scale,
        latency={3: 100 * scale, 5: 300 * scale, 8: 100 * scale},
        groups=_groups(scale),
    )


@pytest.mark.parametrize(
    "rule_id",
    [
        "disparate-impact",
        "disparate-impact-24h",
        "fnr-gap",
        "group-shift",
        "accuracy-drop-24h",
        "latency-vs-normal",
    ],
)
def test_shared_bounds_give_every_row_the_boundary_it_gets_alone(rules: RuleSet, rule_id: str) -> None:
    rule = rules.by_id(rule_id)
    current, baseline = _window(30), _window(40)
    groups = {a: frozenset(v) for a, v in current.groups.items()}
    rows = questions(rule, "1", groups, rules.fairness, None)
    assert rows
    memo: Memo = {}
    delta = 1.0 - rule.confidence
    shared = [estimated_boundary(q, current, baseline, rules.fairness, delta, memo) for q in rows]
    alone = [estimated_boundary(q, current, baseline, rules.fairness, delta) for q in rows]
    assert shared == alone
    assert any(math.isfinite(b.p0) for b in shared)
    if len(rows) > len(rule.steps()):  # a bias rule: bounds computed once per attribute (and side)
        assert len([k for k in memo if k[0] in ("impact", "fnr", "shift")]) <= 2 * len(groups)


def test_a_disparate_impact_boundary_is_the_best_other_groups_lower_bound(rules: RuleSet) -> None:
    rule = rules.by_id("disparate-impact")
    current = _window(3)
    groups = {a: frozenset(v) for a, v in current.groups.items()}
    (q, *_) = [
        r for r in questions(rule, "1", groups, rules.fairness, None) if r.group == "sex=F" and r.step == 0
    ]
    delta = 1.0 - rule.confidence
    boundary = estimated_boundary(q, current, None, rules.fairness, delta, {})
    m = current.groups["sex"]["M"]
    low = stats.beta.ppf(delta, m.favourable, m.decisions - m.favourable + 1)
    assert boundary.p0 == pytest.approx(1.0 - rule.steps()[0].threshold * low, rel=1e-12)
    assert boundary.basis is not None and boundary.basis["reference_group"] == "M"


@pytest.mark.parametrize("tied", [False, True])
def test_each_group_is_compared_with_the_first_best_other_group(rules: RuleSet, tied: bool) -> None:
    # What max() over the other groups picks, ties to the first in the window's order.
    rule = rules.by_id("disparate-impact")
    current = _window(30)
    if tied:
        same = GroupStats(decisions=300, favourable=180)
        current = WindowStats(groups={"zip3": {f"9{i:02d}": same for i in (5, 1, 9, 3)}})
    groups = {a: frozenset(v) for a, v in current.groups.items()}
    delta = 1.0 - rule.confidence
    memo: Memo = {}
    for q in questions(rule, "1", groups, rules.fairness, None):
        if q.attribute != "zip3":
            continue
        zips = current.groups["zip3"]
        others = [g for g in zips if g != q.value]
        d = delta / len(others)
        low = {
            g: stats.beta.ppf(d, zips[g].favourable, zips[g].decisions - zips[g].favourable + 1)
            for g in others
        }
        expected = max(others, key=lambda g: low[g])
        boundary = estimated_boundary(q, current, None, rules.fairness, delta, memo)
        assert boundary.basis is not None and boundary.basis["reference_group"] == expected
    if tied:
        assert (
            estimated_boundary(q, current, None, rules.fairness, delta, memo).basis["reference_group"]
            == "905"
        )
