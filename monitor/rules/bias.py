"""Bias rules (pure): disparate impact, false-negative-rate gaps and sudden shifts, per group.

Each declared attribute (protected, or a possible proxy) is tested group by group against a
reference group: the one declared in the rules file, else the most favoured one in the window (for
false-negative rates, the group with the lowest rate). The sequential detectors decide these rules
(monitor.rules.detectors); these probes give an incident its window's figures, and decide a rule
only with `test: none` (then, with `fdr`, Benjamini–Hochberg over every group of the tick).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monitor import stats
from monitor.aggregates.window import GroupStats, VersionWindows, WindowStats
from monitor.rules.evaluate import Finding, Probe, conclude
from monitor.rules.kinds import BIAS_METRICS as BIAS_METRICS  # re-exported: the bias metrics' names
from monitor.rules.schema import Fairness, Rule

# A bias probe: one Probe per tested group of one attribute, from that attribute's groups in the
# window, the reference group the rules file declares (if any) and the groups in the baseline.
Groups = dict[str, GroupStats]
GroupProbe = Callable[[Rule, Groups, str | None, Groups], list[tuple[str, Probe]]]


def evaluate_bias(
    rule: Rule,
    model_id: str,
    version: str,
    windows: VersionWindows,
    *,
    baseline: WindowStats | None,
    fairness: Fairness,
) -> list[Finding]:
    """Findings of one bias rule for one model version, one per tested group."""
    current = windows.window(rule.window_s)
    findings: list[Finding] = []
    for attr, is_proxy in fairness.attributes(rule.attributes):
        groups = current.groups.get(attr, {})
        declared = fairness.protected[attr].reference if attr in fairness.protected else None
        context: dict[str, Any] = {"attribute": attr, "proxy": is_proxy}
        if is_proxy:
            context["proxy_for"] = fairness.proxies[attr].proxy_for
        reference = baseline.groups.get(attr, {}) if baseline else {}
        for group, probe in GROUP_PROBES[rule.metric](rule, groups, declared, reference):
            probe.extra.update(context)
            findings.append(conclude(rule, model_id, version, f"{attr}={group}", probe, rule.steps()))
    return findings


def _rate(g: GroupStats) -> float:
    return g.favourable / g.decisions if g.decisions else 0.0


def _fnr(g: GroupStats) -> float:
    return g.false_negative / g.actual_positive if g.actual_positive else 0.0


def _disparate_impact(
    rule: Rule, groups: dict[str, GroupStats], declared: str | None, reference_groups: dict[str, GroupStats]
) -> list[tuple[str, Probe]]:
    sized = {name: g for name, g in groups.items() if g.decisions >= rule.min_samples}
    if len(sized) < 2:
        return []
    reference = declared if declared is not None else max(sized, key=lambda name: _rate(sized[name]))
    ref = sized.get(reference)
    if ref is None or ref.favourable == 0:
        return []
    probes = []
    for name, g in sorted(sized.items()):
        if name == reference:
            continue
        ratio = _rate(g) / _rate(ref)

        def test(t: float, g: GroupStats = g, ref: GroupStats = ref) -> stats.TestResult:
            return stats.ratio_below(
                g.favourable, g.decisions, ref.favourable, ref.decisions, t, rule.confidence
            )

        def inside(t: float, ratio: float = ratio) -> bool:
            return ratio >= t

        probes.append(
            (
                name,
                Probe(
                    ratio,
                    g.decisions,
                    _rate(ref),
                    test,
                    inside,
                    {
                        "group": name,
                        "reference_group": reference,
                        "favourable_rate": _rate(g),
                        "reference_rate": _rate(ref),
                        "decisions": g.decisions,
                        "unfavourable": g.decisions - g.favourable,
                        "reference_decisions": ref.decisions,
                    },
                ),
            )
        )
    return probes


def _fnr_gap(
    rule: Rule, groups: dict[str, GroupStats], declared: str | None, reference_groups: dict[str, GroupStats]
) -> list[tuple[str, Probe]]:
    sized = {name: g for name, g in groups.items() if g.actual_positive >= rule.min_samples}
    if len(sized) < 2:
        return []
    reference = declared if declared in sized else min(sized, key=lambda name: _fnr(sized[name]))
    ref = sized[reference]
    probes = []
    for name, g in sorted(sized.items()):
        if name == reference:
            continue
        gap = _fnr(g) - _fnr(ref)

        def test(t: float, g: GroupStats = g, ref: GroupStats = ref) -> stats.TestResult:
            return stats.difference_above(
                g.false_negative,
                g.actual_positive,
                ref.false_negative,
                ref.actual_positive,
                t,
                rule.confidence,
            )

        def inside(t: float, gap: float = gap) -> bool:
            return gap <= t

        probes.append(
            (
                name,
                Probe(
                    gap,
                    g.actual_positive,
                    _fnr(ref),
                    test,
                    inside,
                    {
                        "group": name,
                        "reference_group": reference,
                        "false_negative_rate": _fnr(g),
                        "reference_false_negative_rate": _fnr(ref),
                        "actual_positives": g.actual_positive,
                        "decisions": g.decisions,
                        "unfavourable": g.decisions - g.favourable,
                    },
                ),
            )
        )
    return probes


def _shift(
    rule: Rule, groups: dict[str, GroupStats], declared: str | None, reference: dict[str, GroupStats]
) -> list[tuple[str, Probe]]:
    names = [
        n
        for n, g in groups.items()
        if g.decisions >= rule.min_samples and reference.get(n, GroupStats()).decisions >= rule.min_samples
    ]
    if len(names) < 2:
        return []
    probes = []
    for name in sorted(names):
        g, r = groups[name], reference[name]
        others_now = [groups[o] for o in names if o != name]
        others_ref = [reference[o] for o in names if o != name]
        now_o = (sum(o.favourable for o in others_now), sum(o.decisions for o in others_now))
        ref_o = (sum(o.favourable for o in others_ref), sum(o.decisions for o in others_ref))
        moved = (_rate(g) - _rate(r)) - (now_o[0] / now_o[1] - ref_o[0] / ref_o[1])

        def test(
            t: float,
            g: GroupStats = g,
            r: GroupStats = r,
            now_o: tuple[int, int] = now_o,
            ref_o: tuple[int, int] = ref_o,
        ) -> stats.TestResult:
            return stats.shift_beyond(
                (g.favourable, g.decisions), (r.favourable, r.decisions), now_o, ref_o, t, rule.confidence
            )

        def inside(t: float, moved: float = moved) -> bool:
            return abs(moved) <= t

        probes.append(
            (
                name,
                Probe(
                    moved,
                    g.decisions,
                    _rate(r),
                    test,
                    inside,
                    {
                        "group": name,
                        "favourable_rate": _rate(g),
                        "reference_rate": _rate(r),
                        "others_shift": now_o[0] / now_o[1] - ref_o[0] / ref_o[1],
                        "decisions": g.decisions,
                        "unfavourable": g.decisions - g.favourable,
                    },
                ),
            )
        )
    return probes


# The probe of every bias metric (monitor.rules.kinds: evaluation "groups"): a new one adds its here.
GROUP_PROBES: dict[str, GroupProbe] = {
    "disparate_impact": _disparate_impact,
    "fnr_gap": _fnr_gap,
    "group_shift": _shift,
}
