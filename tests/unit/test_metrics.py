"""What /metrics exports: the evaluator's gauges from a tick, the latency histogram, and which worker
exports what."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.aggregates import histogram
from monitor.aggregates.predictions import group_field
from monitor.aggregates.window import GroupStats, VersionWindows
from monitor.evaluator import TickReport
from monitor.incidents.incident import Incident
from monitor.metrics import LATENCY_EDGES, NotificationMetrics, window_label
from monitor.model_metrics import EvaluatorMetrics, bounded_groups, latency_buckets
from monitor.rules.evaluate import Finding
from monitor.rules.loader import load_rules
from monitor.rules.schema import RuleSet

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_760_000_000.0 + 30  # half a minute into a minute


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rules(ROOT / "monitor" / "rules" / "default.yaml")


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples called `name`, keyed by their sorted labels."""
    text = generate_latest(registry).decode()
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def group_counts(attr: str, values: dict[str, tuple[int, int, int]]) -> Counter[str]:
    """Bucket fields of groups of one attribute: value -> (decisions, favourable, labelled favourable
    of which half decided unfavourably); every decision is also labelled, half of them correctly."""
    c: Counter[str] = Counter()
    for value, (decisions, favourable, actual_positive) in values.items():
        for stat, n in (
            ("n", decisions),
            ("dec", decisions),
            ("pos", favourable),
            ("lab", decisions),
            ("cor", decisions // 2),
            ("apos", actual_positive),
            ("fn", actual_positive // 2),
        ):
            c[group_field(attr, value, stat)] += n
        c["n"] += decisions
        c["dec"] += decisions
    return c


def windows(current_minute: Counter[str], older_hour: Counter[str] | None = None) -> VersionWindows:
    """A version's buckets: `current_minute` now, `older_hour` 3 hours back (in the 24 h window only)."""
    hours = [Counter(current_minute)] + [Counter() for _ in range(14 * 24)]
    if older_hour is not None:
        hours[3] = Counter(older_hour)
    return VersionWindows(NOW, [Counter(current_minute)] + [Counter() for _ in range(59)], hours)


def di_finding(
    rule_id: str, window_s: int, group: str, value: float, *, fired: bool = False, attribute: str = "sex"
) -> Finding:
    return Finding(
        rule_id,
        "loan",
        "1",
        f"{attribute}={group}",
        fired,
        not fired,
        "HIGH",
        3,
        {
            "metric": "disparate_impact",
            "window_s": window_s,
            "value": value,
            "attribute": attribute,
            "group": group,
            "reference_group": "M",
        },
    )


def incident(category: str, severity: str, group: str | None = None) -> Incident:
    return Incident(
        id=f"INC-{category}-{severity}",
        category=category,
        rule="r",
        model_id="loan",
        model_version="1",
        severity=severity,
        level=1,
        status="open",
        opened_at=NOW,
        updated_at=NOW,
        group=group,
    )


def test_window_labels_use_the_rules_units() -> None:
    assert [window_label(s) for s in (300, 1800, 3600, 86_400, 604_800, 90)] == [
        "5m",
        "30m",
        "1h",
        "24h",
        "7d",
        "90s",
    ]


def test_latency_histogram_is_cumulative_at_exact_powers_of_two() -> None:
    totals = {
        f"lat|{histogram.bucket_of(ms)}": n for ms, n in ((0.05, 1), (1.0, 3), (1.7, 2), (200_000.0, 4))
    }
    pairs = latency_buckets({**totals, "n": 99, "latn": 10})
    assert [le for le, _ in pairs][:4] == ["0.0001", "0.0002", "0.0004", "0.0008"]
    assert pairs[-2][0] == "52.4288" and pairs[-1] == ("+Inf", 10)
    assert len(pairs) == len(LATENCY_EDGES) + 1 == 21
    by_le = dict(pairs)
    assert by_le["0.0001"] == 1  # 0.05 ms
    assert by_le["0.0008"] == 1 and by_le["0.0016"] == 4 and by_le["0.0032"] == 6  # 1.0 ms ≤ 1.6 ms < 1.7 ms
    assert by_le["52.4288"] == 6  # the 200 s ones are only in +Inf
    counts = [count for _, count in pairs]
    assert counts == sorted(counts)
    # each le is an edge of the internal histogram: a value on it falls in the bucket below
    assert histogram.bucket_of(float(pairs[5][0]) * 1000) == LATENCY_EDGES[5]


def test_incidents_open_has_every_label_set_and_levels_follow_the_report(rules: RuleSet) -> None:
    registry = CollectorRegistry()
    metrics = EvaluatorMetrics(registry, rules)
    metrics.record(TickReport(live=[incident("bias", "HIGH"), incident("bias", "HIGH")], levels={"loan": 3}))
    open_now = samples(registry, "aimon_incidents_open")
    assert len(open_now) == 15 and sum(open_now.values()) == 2
    assert open_now[(("category", "bias"), ("severity", "HIGH"))] == 2
    assert open_now[(("category", "security"), ("severity", "CRITICAL"))] == 0
    metrics.record(TickReport(levels={"loan": 0}))
    assert set(samples(registry, "aimon_incidents_open").values()) == {0}  # back to 0, not gone
    assert samples(registry, "aimon_escalation_level") == {(("model_id", "loan"),): 0}


def test_group_gauges_carry_their_window_and_the_tail_is_pooled(rules: RuleSet) -> None:
    registry = CollectorRegistry()
    metrics = EvaluatorMetrics(registry, rules, max_groups=2)
    # Now: F 100 decisions (40 favourable), M 300 (240), X 50 (10), Y 10 (5). Three hours ago, in the
    # 24 h window only: F 100 more, all favourable.
    now = group_counts("sex", {"F": (100, 40, 20), "M": (300, 240, 40), "X": (50, 10, 10), "Y": (10, 5, 2)})
    earlier = group_counts("sex", {"F": (100, 100, 0)})
    report = TickReport(
        windows={("loan", "1"): windows(now, earlier)},
        findings=[
            di_finding("disparate-impact", 1800, "F", 0.5),
            di_finding("disparate-impact-24h", 86_400, "F", 0.875),
            di_finding("disparate-impact", 1800, "X", 0.25),
            di_finding("disparate-impact", 1800, "Y", 0.625),
        ],
    )
    metrics.record(report)
    rate = samples(registry, "aimon_group_favourable_rate")

    def key(group: str, window: str) -> tuple[tuple[str, str], ...]:
        return tuple(
            sorted(
                {
                    "model_id": "loan",
                    "version": "1",
                    "attribute": "sex",
                    "group": group,
                    "window": window,
                }.items()
            )
        )

    assert rate[key("F", "30m")] == 0.4 and rate[key("F", "24h")] == 0.7  # not one overwriting the other
    assert rate[key("M", "30m")] == 0.8
    assert rate[key("_other", "30m")] == 15 / 60  # X and Y pooled
    assert rate[key("F", "1h")] == 0.4  # the group-shift rule's window
    assert {dict(k)["group"] for k in rate} == {
        "F",
        "M",
        "_other",
    }  # two by name (most requests), the rest pooled
    # Ratios of the disparate-impact rules' windows, against the most favoured group with the
    # rules' 100 decisions (X and Y have fewer: no ratio, as no rule would judge them).
    impact = samples(registry, "aimon_disparate_impact_ratio")
    assert impact == {key("F", "30m"): pytest.approx(0.5), key("F", "24h"): pytest.approx(0.875)}
    fnr = samples(registry, "aimon_group_false_negative_rate")
    assert fnr[key("F", "24h")] == 10 / 20 and key("F", "30m") not in fnr  # the fnr-gap rule's window only
    accuracy = samples(registry, "aimon_group_accuracy")
    assert accuracy[key("F", "24h")] == 100 / 200 and accuracy[key("_other", "24h")] == 30 / 60


def test_a_proxy_shows_only_its_flagged_groups(rules: RuleSet) -> None:
    registry = CollectorRegistry()
    metrics = EvaluatorMetrics(registry, rules)
    zips = group_counts("zip3", {f"{z:03d}": (100, 60, 10) for z in range(300)})
    zips.update(group_counts("zip3", {"941": (100, 20, 10)}))
    report = TickReport(
        windows={("loan", "1"): windows(zips)},
        findings=[
            di_finding("disparate-impact", 1800, "941", 0.3, fired=True, attribute="zip3"),
            di_finding("disparate-impact", 1800, "007", 0.9, attribute="zip3"),
        ],
    )
    metrics.record(report)
    rate = {
        dict(k)["group"]: v
        for k, v in samples(registry, "aimon_group_favourable_rate").items()
        if dict(k)["window"] == "30m"
    }
    assert rate == {"941": pytest.approx(40 / 200), "_other": pytest.approx(0.6)}
    impact = {dict(k)["group"]: v for k, v in samples(registry, "aimon_disparate_impact_ratio").items()}
    assert impact == {"941": pytest.approx(1 / 3), "_other": 1.0}  # _other: the lowest of the rest


def test_model_gauges_use_the_rules_window(rules: RuleSet) -> None:
    registry = CollectorRegistry()
    metrics = EvaluatorMetrics(registry, rules)
    minutes = [Counter({"n": 10, "err": 1}) for _ in range(60)]
    w = VersionWindows(
        NOW,
        minutes,
        [Counter({"n": 600, "err": 60, "lab": 100, "cor": 90})] + [Counter() for _ in range(14 * 24)],
    )
    metrics.record(TickReport(windows={("loan", "1"): w}))
    predictions = samples(registry, "aimon_model_predictions")
    # The error-rate rule's 5 minutes: the current minute and the 4 before (5 buckets, not 6).
    assert predictions == {(("model_id", "loan"), ("version", "1"), ("window", "5m")): 50}
    accuracy = samples(registry, "aimon_model_accuracy")
    assert set(accuracy.values()) == {0.9}
    assert {dict(k)["window"] for k in accuracy} == {"24h", "7d"}  # the accuracy rules' windows


def test_only_the_evaluating_worker_exports_the_gauges(rules: RuleSet) -> None:
    registry = CollectorRegistry()
    evaluating = [True]
    metrics = EvaluatorMetrics(registry, rules, evaluating=lambda: evaluating[0])
    metrics.record(TickReport(levels={"loan": 2}))
    assert samples(registry, "aimon_escalation_level")
    evaluating[0] = False
    assert samples(registry, "aimon_escalation_level") == {}
    assert samples(registry, "aimon_incidents_open") == {}
    # the process's own counters stay
    assert samples(registry, "aimon_incidents_opened_total")
    assert samples(registry, "aimon_evaluator_errors_total") == {(): 0.0}


def test_notification_counters_exist_per_channel_from_the_start() -> None:
    registry = CollectorRegistry()
    NotificationMetrics(registry)
    assert samples(registry, "aimon_notification_failures_total") == {
        (("channel", "alertmanager"),): 0.0,
        (("channel", "webhook"),): 0.0,
    }


@pytest.mark.parametrize(("only", "expected"), [(None, {"a", "b"}), (["c", "zz"], {"c"}), ([], set())])
def test_bounded_groups_keeps_the_busiest(only: list[str] | None, expected: set[str]) -> None:
    groups = {name: GroupStats(count=n) for name, n in (("a", 30), ("b", 20), ("c", 10), ("d", 20))}
    shown, folded = bounded_groups(groups, 2, only=only)
    assert set(shown) == expected and set(shown) | set(folded) == set(groups)
    assert not set(shown) & set(folded)
