"""What a sequential rule asks of one model version's events, as detector rows (pure).

A *question* is one detector row: which counters of the version's totals are the "bad" events and
which the trials, and the boundary p0 that a rate of bad events must not pass. Every rule is put in
the form "the rate of bad events exceeds p0":

| metric | bad events, of | p0 |
|---|---|---|
| error_rate, flag_rate | errors or flagged, of requests | the step's threshold t |
| accuracy below a minimum m | wrong, of labelled | 1 − m |
| accuracy drop t from a baseline | wrong, of labelled | 1 − (baseline lower bound)·(1 − t) |
| latency quantile q above X | slower than X, of timed | 1 − q (ratio_above: X = t × baseline upper bound) |
| disparate impact below t | unfavourable, of a group's decisions | 1 − t × (reference lower bound) |
| false-negative-rate gap above t | false negatives, of actual positives | reference upper bound + t |
| group shift beyond t | favourable (up) or unfavourable (down) | own reference ± others' shift ± t |

A boundary that comes from data (a baseline, another group) rests on one-sided exact bounds at
level `delta` (1 − the rule's confidence, monitor.rules.detectors): conservative with that chance."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats

from monitor.aggregates import histogram
from monitor.aggregates.predictions import (
    ACTUAL_POSITIVE,
    CORRECT,
    COUNT,
    DECISIONS,
    ERRORS,
    FALSE_NEGATIVE,
    FAVOURABLE,
    LABELLED,
    LATE_EDGES_S,
    flag_field,
    group_field,
    late_field,
)
from monitor.aggregates.window import GroupStats, WindowStats
from monitor.detect.intervals import lower_bounds, upper_bounds
from monitor.rules.kinds import RATE_METRICS
from monitor.rules.schema import Fairness, ModelFacts, Rule

# Decided by detectors; every other rate metric is a windowed test at a share of the budget.
SEQUENTIAL_METRICS = frozenset(
    {"error_rate", "flag_rate", "accuracy", "latency", "disparate_impact", "fnr_gap", "group_shift"}
)
# The other rate metrics are not event streams (users, a gap between the best and worst group):
# a windowed test at a share of the budget (monitor.detection.windowed_tests).
WINDOWED_METRICS = RATE_METRICS - SEQUENTIAL_METRICS
Terms = tuple[tuple[str, float], ...]  # a linear combination of totals fields (without the version)


def sequential(rule: Rule) -> bool:
    """Whether a detector decides this rule (`test: none` keeps the point estimate)."""
    return rule.metric in SEQUENTIAL_METRICS and rule.test != "none"


def estimated(rule: Rule) -> bool:
    """Whether the rule's boundary comes from data (a baseline or another group), not its threshold."""
    return rule.compare in ("relative_drop", "ratio_above") or rule.metric in (
        "disparate_impact",
        "fnr_gap",
        "group_shift",
    )


@dataclass(frozen=True)
class Question:
    """One detector row: `bad` of `total` events of `version` (in `group`, for bias rules), against
    the boundary of ladder step `step`; `side` "down" counts the opposite outcome (group shift)."""

    rule: Rule
    version: str
    group: str | None
    attribute: str | None
    value: str | None
    step: int
    side: str
    bad: Terms
    total: Terms
    latency: bool = False  # bad = timed events slower than the row's cut (set with its boundary)

    @property
    def key(self) -> str:
        """Stable name of the row (its persisted state is found by it)."""
        return f"{self.rule.id}|{self.version}|{self.group or ''}|{self.step}|{self.side}"

    @property
    def finding_key(self) -> tuple[str, str, str | None]:
        """The finding the row contributes to: (rule, version, group)."""
        return (self.rule.id, self.version, self.group)


def timely(terms: Terms, window_s: int) -> Terms:
    """`terms` less what arrived too late for a rule watching `window_s`: the lateness tiers whose
    events were already older than the window on arrival (monitor.aggregates.predictions)."""
    lower_edges = (0, *LATE_EDGES_S)
    late = [tier for tier in range(1, len(lower_edges)) if lower_edges[tier] >= window_s]
    return terms + tuple((late_field(tier, name), -coef) for tier in late for name, coef in terms)


def questions(
    rule: Rule,
    version: str,
    groups: Mapping[str, frozenset[str]],
    fairness: Fairness,
    facts: ModelFacts | None,
) -> list[Question]:
    """The rows of `rule` for one version whose totals hold `groups` (attribute → values); each
    counts only the events that arrived while they still belonged to the rule's window."""
    return [
        replace(q, bad=timely(q.bad, rule.window_s), total=timely(q.total, rule.window_s))
        for q in _questions(rule, version, groups, fairness, facts)
    ]


def _questions(
    rule: Rule,
    version: str,
    groups: Mapping[str, frozenset[str]],
    fairness: Fairness,
    facts: ModelFacts | None,
) -> list[Question]:
    published = facts.published_min_accuracy if facts else None
    if rule.compare == "below_published_minimum" and published is None:
        return []
    steps = range(len(rule.steps(published)))
    metric = rule.metric

    def one(bad: Terms, total: Terms, latency: bool = False) -> list[Question]:
        return [Question(rule, version, None, None, None, s, "up", bad, total, latency) for s in steps]

    if metric == "error_rate":
        return one(((ERRORS, 1.0),), ((COUNT, 1.0),))
    if metric == "flag_rate":
        assert rule.flag is not None
        return one(((flag_field(rule.flag), 1.0),), ((COUNT, 1.0),))
    if metric == "accuracy":
        return one(((LABELLED, 1.0), (CORRECT, -1.0)), ((LABELLED, 1.0),))
    if metric == "latency":
        return one((), (), latency=True)
    rows: list[Question] = []
    for attr, _ in fairness.attributes(rule.attributes):
        for value in sorted(groups.get(attr, ())):
            group = f"{attr}={value}"

            def field(stat: str, attr: str = attr, value: str = value) -> str:
                return group_field(attr, value, stat)

            for s in steps:
                if metric == "disparate_impact":
                    bad: Terms = ((field(DECISIONS), 1.0), (field(FAVOURABLE), -1.0))
                    rows.append(
                        Question(
                            rule, version, group, attr, value, s, "down", bad, ((field(DECISIONS), 1.0),)
                        )
                    )
                elif metric == "fnr_gap":
                    total: Terms = ((field(ACTUAL_POSITIVE), 1.0),)
                    rows.append(
                        Question(
                            rule, version, group, attr, value, s, "up", ((field(FALSE_NEGATIVE), 1.0),), total
                        )
                    )
                elif metric == "group_shift":
                    decisions: Terms = ((field(DECISIONS), 1.0),)
                    up: Terms = ((field(FAVOURABLE), 1.0),)
                    down: Terms = ((field(DECISIONS), 1.0), (field(FAVOURABLE), -1.0))
                    rows.append(Question(rule, version, group, attr, value, s, "up", up, decisions))
                    rows.append(Question(rule, version, group, attr, value, s, "down", down, decisions))
    return rows


@dataclass(frozen=True)
class Boundary:
    """A row's boundary as last computed: p0 (NaN: not testable yet), the latency cut in seconds for
    latency rows, and what it was built from (reported in the incident)."""

    p0: float
    cut_s: float | None = None
    basis: Mapping[str, object] | None = None


UNTESTABLE = Boundary(math.nan)


def fixed_boundary(q: Question, facts: ModelFacts | None) -> Boundary:
    """The boundary of a row whose rule needs no data to state it (NaN for an estimated one)."""
    rule = q.rule
    if estimated(rule):
        return UNTESTABLE
    threshold = rule.steps(facts.published_min_accuracy if facts else None)[q.step].threshold
    if rule.metric == "accuracy":
        return Boundary(1.0 - threshold)
    if rule.metric == "latency":
        assert rule.quantile is not None
        return Boundary(1.0 - rule.quantile, cut_s=threshold)
    return Boundary(threshold)


# What one re-statement of a version computed once for all its rows (a rule's ladder steps, a bias
# rule's groups): the bounds, as vectors over the groups. Valid only while the windows it was
# computed from are (the caller makes one per version and refresh).
Memo = dict[tuple[Any, ...], Any]


def estimated_boundary(
    q: Question,
    current: WindowStats,
    baseline: WindowStats | None,
    fairness: Fairness,
    delta: float,
    memo: Memo | None = None,
) -> Boundary:
    """The conservative boundary of a row whose rule compares with data: `current` is the rule's
    window of the version now, `baseline` its baseline (reference or a week ago); each bound holds
    with probability ≥ 1 − delta. Rows of one version re-stated together share `memo` (the same
    rule's `current` and `baseline` for each), so each bound is computed once, for every group."""
    memo = {} if memo is None else memo
    rule = q.rule
    if ("thresholds", rule.id) not in memo:
        memo[("thresholds", rule.id)] = (
            [s.threshold for s in rule.steps()] if rule.threshold is not None else []
        )
    t = memo[("thresholds", rule.id)][q.step] if rule.threshold is not None else math.nan
    if rule.compare == "relative_drop":
        if baseline is None or baseline.labelled < rule.min_samples or not baseline.correct:
            return UNTESTABLE
        base = baseline.correct / baseline.labelled
        key = ("drop", rule.id, delta)
        if key not in memo:
            memo[key] = float(
                lower_bounds(np.array([baseline.correct]), np.array([baseline.labelled]), delta)[0]
            )
        low = memo[key]
        return Boundary(1.0 - low * (1.0 - t), basis={"baseline": base, "baseline_bound": low})
    if rule.metric == "latency":  # ratio_above: X = t × an upper bound on the baseline's quantile
        assert rule.quantile is not None
        if baseline is None or baseline.latency_count < rule.min_samples:
            return UNTESTABLE
        key = ("latency", rule.id, delta)
        if key not in memo:
            memo[key] = (
                quantile_upper_s(baseline.latency, rule.quantile, delta),
                baseline.latency_quantile_s(rule.quantile),
            )
        upper_s, base_s = memo[key]
        return Boundary(
            1.0 - rule.quantile, cut_s=t * upper_s, basis={"baseline": base_s, "baseline_bound": upper_s}
        )
    assert q.attribute is not None and q.value is not None
    now = current.groups.get(q.attribute, {})
    if rule.metric == "disparate_impact":
        return _impact(q, now, fairness, t, delta, memo)
    if rule.metric == "fnr_gap":
        return _fnr(q, now, fairness, t, delta, memo)
    ref = baseline.groups.get(q.attribute, {}) if baseline else {}
    return _shift(q, now, ref, t, delta, memo)


def quantile_upper_s(latency: Mapping[int, int], q: float, delta: float) -> float:
    """An upper bound (probability ≥ 1 − delta) on the q-quantile of a latency histogram: the upper
    edge of the bucket holding the order statistic of rank binom.ppf(1 − delta, n, q) + 1."""
    n = sum(latency.values())
    rank = min(n, int(stats.binom.ppf(1.0 - delta, n, q)) + 1)
    seen = 0
    for index in sorted(latency):
        seen += latency[index]
        if seen >= rank:
            return histogram.upper_bound_ms(index) / 1000.0
    return histogram.upper_bound_ms(histogram.BUCKETS - 1) / 1000.0


def _bounds(groups: Mapping[str, GroupStats], k: str, n: str, delta: float, upper: bool) -> dict[str, float]:
    names = sorted(groups)
    ks = np.array([getattr(groups[g], k) for g in names], dtype=float)
    ns = np.array([getattr(groups[g], n) for g in names], dtype=float)
    bounds = upper_bounds(ks, ns, delta) if upper else lower_bounds(ks, ns, delta)
    return dict(zip(names, (float(b) for b in bounds), strict=True))


def _shared_bounds(
    memo: Memo,
    key: tuple[Any, ...],
    groups: Mapping[str, GroupStats],
    k: str,
    n: str,
    delta: float,
    upper: bool,
) -> dict[str, float]:
    """`_bounds` of every group at once, kept in `memo` for the other rows that ask (a bound is a
    function of its own group's counts and the level alone)."""
    if key not in memo:
        memo[key] = _bounds(groups, k, n, delta, upper)
    bounds: dict[str, float] = memo[key]
    return bounds


def _best(
    memo: Memo,
    key: tuple[Any, ...],
    groups: Mapping[str, GroupStats],
    others: list[str],
    bounds: Mapping[str, float],
    own: str | None,
    every_other: bool,
    *,
    highest: bool,
) -> str:
    """The first group of `others` with the highest (or lowest) bound. When `others` is every one
    of `groups` but `own`, it is read off a ranking of `groups` made once (a stable sort keeps the
    first of equals first, as max and min do)."""
    if not every_other:
        return max(others, key=lambda g: bounds[g]) if highest else min(others, key=lambda g: bounds[g])
    rank_key = ("rank", *key)
    if rank_key not in memo:
        memo[rank_key] = sorted(groups, key=lambda g: -bounds[g] if highest else bounds[g])
    ranked: list[str] = memo[rank_key]
    return ranked[0] if ranked[0] != own else ranked[1]


def _sized(memo: Memo, q: Question, now: Mapping[str, GroupStats], samples: str) -> dict[str, GroupStats]:
    """The groups of q's attribute with the rule's minimum of `samples` (once per rule and attribute)."""
    key = ("sized", q.rule.id, q.attribute, samples)
    if key not in memo:
        memo[key] = {g: s for g, s in now.items() if getattr(s, samples) >= q.rule.min_samples}
    sized: dict[str, GroupStats] = memo[key]
    return sized


def _impact(
    q: Question, now: Mapping[str, GroupStats], fairness: Fairness, t: float, delta: float, memo: Memo
) -> Boundary:
    rule = q.rule
    sized = _sized(memo, q, now, "decisions")
    declared = fairness.protected[q.attribute].reference if q.attribute in fairness.protected else None
    others = [g for g in sized if g != q.value and (declared is None or g == declared)]
    if q.value not in sized or not others:
        return UNTESTABLE
    level = delta / len(others)
    key = ("impact", rule.id, q.attribute, level)
    low = _shared_bounds(memo, key, sized, "favourable", "decisions", level, upper=False)
    reference = _best(memo, key, sized, others, low, q.value, declared is None, highest=True)
    ref = sized[reference]
    basis = {
        "reference_group": reference,
        "reference_rate": ref.favourable / ref.decisions,
        "reference_bound": low[reference],
    }
    return Boundary(1.0 - t * low[reference], basis=basis)


def _fnr(
    q: Question, now: Mapping[str, GroupStats], fairness: Fairness, t: float, delta: float, memo: Memo
) -> Boundary:
    rule = q.rule
    sized = _sized(memo, q, now, "actual_positive")
    declared = fairness.protected[q.attribute].reference if q.attribute in fairness.protected else None
    others = [g for g in sized if g != q.value and (declared not in sized or g == declared)]
    if q.value not in sized or not others:
        return UNTESTABLE
    level = delta / len(others)
    key = ("fnr", rule.id, q.attribute, level)
    high = _shared_bounds(memo, key, sized, "false_negative", "actual_positive", level, upper=True)
    reference = _best(memo, key, sized, others, high, q.value, declared not in sized, highest=False)
    ref = sized[reference]
    p0 = high[reference] + t
    if p0 >= 1.0:
        return UNTESTABLE
    basis = {
        "reference_group": reference,
        "reference_false_negative_rate": ref.false_negative / ref.actual_positive,
        "reference_bound": high[reference],
    }
    return Boundary(p0, basis=basis)


# Per group of a shift: (own reference bound, others now bound, others in the reference bound,
# others' favourable and decisions now, and in the reference).
_ShiftParts = dict[str, tuple[float, float, float, int, int, int, int]]


def _shift_parts(
    rule: Rule, now: Mapping[str, GroupStats], ref: Mapping[str, GroupStats], up: bool, delta: float
) -> _ShiftParts:
    """The three bounds of every group's shift boundary, each a vector over the groups: the group's
    own reference, and the other groups' pooled rates now and in the reference (pooled = all
    groups minus the group itself)."""
    names = [
        g
        for g, s in now.items()
        if s.decisions >= rule.min_samples and ref.get(g, GroupStats()).decisions >= rule.min_samples
    ]
    if len(names) < 2:
        return {}
    d = delta / 3.0  # three bounds: the group's reference, the others now and in the reference
    ref_k = [ref[g].favourable for g in names]
    ref_n = [ref[g].decisions for g in names]
    now_k = [now[g].favourable for g in names]
    now_n = [now[g].decisions for g in names]
    k_now = [sum(now_k) - k for k in now_k]
    n_now = [sum(now_n) - n for n in now_n]
    k_ref = [sum(ref_k) - k for k in ref_k]
    n_ref = [sum(ref_n) - n for n in ref_n]
    towards, away = (upper_bounds, lower_bounds) if up else (lower_bounds, upper_bounds)
    own = towards(np.array(ref_k, dtype=float), np.array(ref_n, dtype=float), d)
    o_now = towards(np.array(k_now, dtype=float), np.array(n_now, dtype=float), d)
    o_ref = away(np.array(k_ref, dtype=float), np.array(n_ref, dtype=float), d)
    return {
        g: (float(own[i]), float(o_now[i]), float(o_ref[i]), k_now[i], n_now[i], k_ref[i], n_ref[i])
        for i, g in enumerate(names)
    }


def _shift(
    q: Question,
    now: Mapping[str, GroupStats],
    ref: Mapping[str, GroupStats],
    t: float,
    delta: float,
    memo: Memo,
) -> Boundary:
    rule = q.rule
    up = q.side == "up"
    key = ("shift", rule.id, q.attribute, up, delta)
    if key not in memo:
        memo[key] = _shift_parts(rule, now, ref, up, delta)
    parts: _ShiftParts = memo[key]
    if q.value not in parts:
        return UNTESTABLE
    own, o_now, o_ref, k_now, n_now, k_ref, n_ref = parts[q.value]
    g = ref[q.value]
    favourable = own + (o_now - o_ref) + (t if up else -t)
    basis = {
        "reference_rate": g.favourable / g.decisions,
        "others_shift": k_now / n_now - k_ref / n_ref,
        "favourable_boundary": float(favourable),
    }
    p0 = float(favourable) if up else 1.0 - float(favourable)
    if not 0.0 < p0 < 1.0:
        return UNTESTABLE
    return Boundary(p0, basis=basis)
