"""Rule kinds (monitor.rules.kinds): every metric has one row, and every set derived from the rows
equals the literal set the loader and the evaluator used to spell out by hand."""

from __future__ import annotations

from typing import get_args

import pytest
import yaml

import monitor.evaluator
import monitor.rules.bias
import monitor.rules.evaluate
import monitor.rules.kinds as kinds
import monitor.rules.loader
import monitor.rules.schema
import monitor.rules.security
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
from monitor.rules.loader import default_rules_path, load_rules

# The literal sets as they stood before the table (monitor/rules/schema.py, bias.py, security.py and
# evaluator.py), written once here as the expected values.
OLD_METRIC_COMPARES = {
    "accuracy": frozenset({"below", "below_published_minimum", "relative_drop"}),
    "accuracy_gap": frozenset({"widening", "above"}),
    "error_rate": frozenset({"above"}),
    "latency": frozenset({"ratio_above", "above"}),
    "unserved_users": frozenset({"above"}),
    "flag_rate": frozenset({"above"}),
    "silence": frozenset({"silence"}),
    "disparate_impact": frozenset({"below"}),
    "fnr_gap": frozenset({"above"}),
    "group_shift": frozenset({"shift"}),
    "policy_violations": frozenset({"above"}),
    "off_hours_access": frozenset({"above"}),
    "new_principal_access": frozenset({"above"}),
    "access_volume": frozenset({"ratio_above"}),
    "unapproved_artifacts": frozenset({"above"}),
    "denied_burst": frozenset({"above"}),
    "new_source_privileged": frozenset({"above"}),
    "query_volume": frozenset({"ratio_above", "above"}),
}
OLD_BIAS_METRICS = frozenset({"disparate_impact", "fnr_gap", "group_shift"})
OLD_SECURITY_METRICS = frozenset(
    {
        "policy_violations",
        "off_hours_access",
        "new_principal_access",
        "access_volume",
        "unapproved_artifacts",
        "denied_burst",
        "new_source_privileged",
        "query_volume",
    }
)
OLD_VOLUME_METRICS = frozenset({"access_volume", "query_volume"})
OLD_MIN_COUNT_THRESHOLD = {metric: 0 for metric in OLD_SECURITY_METRICS} | {"query_volume": 1}
OLD_RATE_METRICS = frozenset(
    {"accuracy", "accuracy_gap", "error_rate", "unserved_users", "flag_rate", "latency"} | OLD_BIAS_METRICS
)
OLD_SCHEMA_ACCURACY_METRICS = frozenset({"accuracy", "accuracy_gap"})  # schema.py's ACCURACY_METRICS
OLD_LABEL_METRICS = OLD_SCHEMA_ACCURACY_METRICS | {"fnr_gap"}
OLD_EVALUATOR_ACCURACY_METRICS = {"accuracy", "accuracy_gap", "fnr_gap"}  # evaluator.py's ACCURACY_METRICS
OLD_COMPARE_BASELINES = {
    "relative_drop": ("reference", "week_ago"),
    "ratio_above": ("reference", "week_ago"),
    "widening": ("reference", "week_ago"),
    "shift": ("reference",),
}
OLD_METRIC_BASELINES = {
    metric: (("reference",), "a volume is compared with its principal's or key's own previous 7 days")
    for metric in OLD_VOLUME_METRICS
}
OLD_BASELINE_REASONS = {"shift": "a group's shift is measured against its own reference"}
OLD_DOWN_COMPARES = frozenset({"below", "below_published_minimum"})
OLD_NO_LADDER_COMPARES = frozenset({"silence", "below_published_minimum"})
OLD_SECURITY_KIND = {  # security.py's KIND: the access counter each security metric reads
    "policy_violations": VIOLATIONS,
    "off_hours_access": OFF_HOURS,
    "new_principal_access": NEW_PRINCIPAL,
    "access_volume": TRAINING_BYTES,
    "unapproved_artifacts": TAMPERED,
    "denied_burst": DENIED,
    "new_source_privileged": NEW_SOURCE_PRIVILEGED,
    "query_volume": QUERIES,
}
# schema.py's key owners: (key, the metrics that take it, required for them), in reporting order.
OLD_KEY_OWNERS = (
    ("flag", frozenset({"flag_rate"}), True),
    ("quantile", frozenset({"latency"}), True),
    ("attribute", frozenset({"accuracy_gap"}), False),
    ("min_label_coverage", OLD_LABEL_METRICS, False),
    ("fdr", OLD_BIAS_METRICS, False),
    ("attributes", OLD_BIAS_METRICS, False),
    ("revoke", OLD_SECURITY_METRICS, False),
    ("min_volume", OLD_VOLUME_METRICS, False),
    ("follow", frozenset({"new_source_privileged"}), False),
    ("false_alarm_every", OLD_RATE_METRICS, False),  # new: the sequential detectors' budget
)


def test_every_metric_of_the_default_rules_has_a_row() -> None:
    written = yaml.safe_load(default_rules_path().read_text())
    metrics = {rule["metric"] for rule in written["rules"]}
    assert metrics <= set(kinds.KINDS)
    assert {r.metric for r in load_rules(default_rules_path()).rules} == metrics
    for rule in written["rules"]:
        assert rule["compare"] in kinds.KINDS[rule["metric"]].compares, rule["id"]


def test_the_literals_list_the_rows_in_order() -> None:
    # The order is the one a "must be 'accuracy', ..." message lists.
    assert get_args(kinds.Metric) == tuple(kinds.KINDS) == tuple(OLD_METRIC_COMPARES)
    assert get_args(kinds.Compare) == tuple(c.name for c in kinds.COMPARISONS)
    assert get_args(kinds.Compare) == (
        "above",
        "below",
        "below_published_minimum",
        "relative_drop",
        "ratio_above",
        "widening",
        "silence",
        "shift",
    )
    assert len(kinds.METRICS) == len(set(kinds.KINDS)) == 18
    assert all(kinds.kind(name).name == name for name in kinds.KINDS)
    with pytest.raises(KeyError):
        kinds.kind("acuracy")


@pytest.mark.parametrize(
    ("derived", "expected"),
    [
        (kinds.METRIC_COMPARES, OLD_METRIC_COMPARES),
        (kinds.BIAS_METRICS, OLD_BIAS_METRICS),
        (kinds.SECURITY_METRICS, OLD_SECURITY_METRICS),
        (kinds.VOLUME_METRICS, OLD_VOLUME_METRICS),
        (kinds.CATEGORY_METRICS, {"bias": OLD_BIAS_METRICS, "security": OLD_SECURITY_METRICS}),
        (kinds.MIN_COUNT_THRESHOLD, OLD_MIN_COUNT_THRESHOLD),
        (kinds.RATE_METRICS, OLD_RATE_METRICS),
        (kinds.PERFORMANCE_METRICS, OLD_SCHEMA_ACCURACY_METRICS),
        (kinds.LABEL_METRICS, OLD_LABEL_METRICS),
        (kinds.LABEL_METRICS, OLD_EVALUATOR_ACCURACY_METRICS),
        (kinds.COMPARE_BASELINES, OLD_COMPARE_BASELINES),
        (kinds.BASELINE_COMPARES, frozenset(OLD_COMPARE_BASELINES)),
        (kinds.METRIC_BASELINES, OLD_METRIC_BASELINES),
        (kinds.BASELINE_REASONS, OLD_BASELINE_REASONS),
        (kinds.DOWN_COMPARES, OLD_DOWN_COMPARES),
        (kinds.NO_LADDER_COMPARES, OLD_NO_LADDER_COMPARES),
        (kinds.COUNTERS, OLD_SECURITY_KIND),
        (kinds.NO_ROLLBACK_METRICS, OLD_SECURITY_METRICS - {"unapproved_artifacts"}),
        (kinds.METRIC_KEYS, tuple(key for key, _, _ in OLD_KEY_OWNERS)),
        (kinds.KEY_METRICS, {key: metrics for key, metrics, _ in OLD_KEY_OWNERS}),
        (
            kinds.REQUIRED_KEY_METRICS,
            {key: metrics if required else frozenset() for key, metrics, required in OLD_KEY_OWNERS},
        ),
    ],
)
def test_a_derived_set_equals_the_old_literal(derived: object, expected: object) -> None:
    assert derived == expected


def test_the_modules_read_the_table_not_copies() -> None:
    # The names other modules still import from bias and security are the table's own sets.
    assert monitor.rules.bias.BIAS_METRICS is kinds.BIAS_METRICS
    assert monitor.rules.security.SECURITY_METRICS is kinds.SECURITY_METRICS
    assert not hasattr(monitor.rules.security, "KIND")  # "kind" means a rule kind now, nothing else


def test_the_two_accuracy_metrics_sets_have_distinct_names() -> None:
    # schema.py's ACCURACY_METRICS (accuracy over labels) and evaluator.py's (everything computed from
    # labels) shared a name and differed by fnr_gap; neither module spells that name any more.
    for module in (kinds, monitor.rules.schema, monitor.evaluator, monitor.rules.loader, monitor.rules.bias):
        assert not hasattr(module, "ACCURACY_METRICS"), module.__name__
    assert kinds.PERFORMANCE_METRICS == OLD_SCHEMA_ACCURACY_METRICS
    assert kinds.LABEL_METRICS == OLD_EVALUATOR_ACCURACY_METRICS
    assert kinds.PERFORMANCE_METRICS != kinds.LABEL_METRICS


def test_every_row_has_its_evaluation() -> None:
    by = {e: kinds.metrics_where(evaluation=e) for e in get_args(kinds.Evaluation)}
    assert set(monitor.rules.evaluate.PROBES) == by["rate"]
    assert set(monitor.rules.bias.GROUP_PROBES) == by["groups"] == kinds.BIAS_METRICS
    assert by["counts"] == kinds.SECURITY_METRICS
    assert by["gaps"] == {"accuracy_gap"}
    assert by["silence"] == {"silence"} == kinds.metrics_where(family="silence")
    for row in kinds.METRICS:
        counts = row.evaluation == "counts"
        counted = (row.counter is not None, row.subject is not None, row.least_count is not None)
        assert counted == (counts,) * 3, row.name
        assert (row.unit == "count") == counts, row.name
        assert not (counts and row.rate), row.name  # a count is never tested as a rate


def test_a_row_has_a_baseline_kind_exactly_when_a_compare_of_it_takes_a_baseline() -> None:
    for row in kinds.METRICS:
        baselined = any(c in kinds.COMPARE_BASELINES for c in row.compares)
        assert (row.baseline != "none") == baselined, row.name
