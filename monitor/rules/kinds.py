"""Rule kinds (pure): one row per metric and per compare; every per-metric set is derived from them.

A metric's row says its family, which compares it takes, how it is evaluated, what its value is
(so which thresholds make sense), whether it is computed from labels, what its baseline is, and the
keys only it takes; the loader's checks (monitor.rules.schema), its defaults (monitor.rules.loader)
and the evaluator's dispatch read these rows or the sets below, never a list of names of their own.
A new rate rule is its name in `Metric`, a row in `METRICS`, and its probe in
monitor.rules.evaluate.PROBES; a new bias metric's probe goes in monitor.rules.bias.GROUP_PROBES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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

# The spelled-out names (pydantic and mypy need literals); tests/unit/test_kinds.py checks that they
# match the tables, in order (a file's "must be 'accuracy', ..." message lists them in this order).
Metric = Literal[
    "accuracy",
    "accuracy_gap",
    "error_rate",
    "latency",
    "unserved_users",
    "flag_rate",
    "silence",
    "disparate_impact",
    "fnr_gap",
    "group_shift",
    "policy_violations",
    "off_hours_access",
    "new_principal_access",
    "access_volume",
    "unapproved_artifacts",
    "denied_burst",
    "new_source_privileged",
    "query_volume",
]
Compare = Literal[
    "above",
    "below",
    "below_published_minimum",
    "relative_drop",
    "ratio_above",
    "widening",
    "silence",
    "shift",
]
Baseline = Literal["reference", "week_ago"]
Family = Literal["performance", "availability", "output_quality", "bias", "security", "silence"]
# How a metric is evaluated: "rate" one probe per version (monitor.rules.evaluate.PROBES); "gaps" the
# gap between the best and worst group of each attribute; "groups" one probe per group of each
# fairness attribute (monitor.rules.bias); "counts" one count per principal, key or artifact
# (monitor.rules.security); "silence" the dead-man's switch.
Evaluation = Literal["rate", "gaps", "groups", "counts", "silence"]
# What a metric's value is, which decides the thresholds an absolute compare (above, below) takes.
Unit = Literal["fraction", "ratio", "seconds", "count"]
# What a baselined compare compares with: "version" the version's reference (its own or a frozen
# predecessor's) or the same window a week ago; "own_history" the principal's or key's own average
# over the previous 7 days; "none" the metric takes no baselined compare.
BaselineKind = Literal["none", "version", "own_history"]
# Whom a security finding names.
Subject = Literal["principal", "api_key", "artifact"]


@dataclass(frozen=True)
class Comparison:
    """One compare: the baselines it needs (none for an absolute compare), its direction, its ladder."""

    name: Compare
    baselines: tuple[Baseline, ...] = ()
    baseline_reason: str | None = None  # why `baselines` is narrower than both, said in the error
    down: bool = False  # a smaller value is worse
    ladder: bool = True  # takes a severity ladder


@dataclass(frozen=True)
class MetricKind:
    """One metric: everything the loader checks and the evaluator dispatches on, in one row."""

    name: Metric
    family: Family
    compares: tuple[Compare, ...]
    evaluation: Evaluation
    unit: Unit
    rate: bool = False  # a proportion of counted events: a sequential detector decides it (the default test)
    needs_labels: bool = False  # computed from ground-truth labels: label coverage matters
    baseline: BaselineKind = "none"
    least_count: int | None = None  # counts: the smallest "above" threshold (0 is "any at all")
    counter: str | None = None  # counts: the access aggregate's counter (monitor.aggregates.access)
    subject: Subject | None = None  # counts: whom a finding names
    rolls_back: bool = True  # an incident may roll the model version back
    keys: tuple[str, ...] = ()  # keys only this metric takes (besides those of its family, labels, baseline)
    required_keys: tuple[str, ...] = ()

    @property
    def takes(self) -> frozenset[str]:
        """Every metric-specific key of the rule format this metric takes."""
        keys = set(self.keys) | set(FAMILY_KEYS.get(self.family, ()))
        if self.needs_labels:
            keys.add("min_label_coverage")
        if self.baseline == "own_history":
            keys.add("min_volume")  # below this amount a ratio with the principal's own past means nothing
        if self.rate:
            keys.add("false_alarm_every")  # the budget of the sequential detectors only rates have
        return frozenset(keys)


_ABOVE_OR_RATIO: tuple[Compare, ...] = ("ratio_above", "above")


def _count(
    name: Metric,
    counter: str,
    compares: tuple[Compare, ...] = ("above",),
    *,
    baseline: BaselineKind = "none",
    least_count: int = 0,
    subject: Subject = "principal",
    rolls_back: bool = False,
    keys: tuple[str, ...] = (),
) -> MetricKind:
    """A security metric: a count of events per principal, key or artifact, never a rate (one
    unauthorized download is an incident), so no statistical test applies."""
    return MetricKind(
        name,
        "security",
        compares,
        "counts",
        "count",
        baseline=baseline,
        least_count=least_count,
        counter=counter,
        subject=subject,
        rolls_back=rolls_back,
        keys=keys,
    )


# The rows, in `Metric` order.
METRICS: tuple[MetricKind, ...] = (
    MetricKind(
        "accuracy",
        "performance",
        ("below", "below_published_minimum", "relative_drop"),
        "rate",
        "fraction",
        rate=True,
        needs_labels=True,
        baseline="version",
    ),
    MetricKind(
        "accuracy_gap",
        "performance",
        ("widening", "above"),
        "gaps",
        "fraction",
        rate=True,
        needs_labels=True,
        baseline="version",
        keys=("attribute",),
    ),
    MetricKind("error_rate", "availability", ("above",), "rate", "fraction", rate=True),
    # A latency quantile is a rate too: "the q-quantile exceeds X" is "more than 1−q of the requests
    # are slower than X", a binomial question.
    MetricKind(
        "latency",
        "availability",
        _ABOVE_OR_RATIO,
        "rate",
        "seconds",
        rate=True,
        baseline="version",
        keys=("quantile",),
        required_keys=("quantile",),
    ),
    MetricKind("unserved_users", "availability", ("above",), "rate", "fraction", rate=True),
    MetricKind(
        "flag_rate",
        "output_quality",
        ("above",),
        "rate",
        "fraction",
        rate=True,
        keys=("flag",),
        required_keys=("flag",),
    ),
    MetricKind("silence", "silence", ("silence",), "silence", "seconds"),
    # A disparate impact is a ratio of favourable rates: below 1.0 is any difference at all.
    MetricKind("disparate_impact", "bias", ("below",), "groups", "ratio", rate=True),
    MetricKind("fnr_gap", "bias", ("above",), "groups", "fraction", rate=True, needs_labels=True),
    MetricKind("group_shift", "bias", ("shift",), "groups", "fraction", rate=True, baseline="version"),
    _count("policy_violations", VIOLATIONS),
    _count("off_hours_access", OFF_HOURS),
    _count("new_principal_access", NEW_PRINCIPAL),
    _count("access_volume", TRAINING_BYTES, ("ratio_above",), baseline="own_history"),
    # A tampered artifact is the version's fault, unlike an access incident: it rolls back.
    _count("unapproved_artifacts", TAMPERED, subject="artifact", rolls_back=True),
    _count("denied_burst", DENIED),
    _count("new_source_privileged", NEW_SOURCE_PRIVILEGED, keys=("follow",)),
    # A query cap of 0 would fire on all use.
    _count(
        "query_volume", QUERIES, _ABOVE_OR_RATIO, baseline="own_history", least_count=1, subject="api_key"
    ),
)
KINDS: dict[str, MetricKind] = {kind.name: kind for kind in METRICS}

# The rows of the compares, in `Compare` order.
COMPARISONS: tuple[Comparison, ...] = (
    Comparison("above"),
    Comparison("below", down=True),
    Comparison("below_published_minimum", down=True, ladder=False),
    Comparison("relative_drop", ("reference", "week_ago")),
    Comparison("ratio_above", ("reference", "week_ago")),
    Comparison("widening", ("reference", "week_ago")),
    Comparison("silence", ladder=False),
    # A week ago may already hold the drift being looked for.
    Comparison("shift", ("reference",), "a group's shift is measured against its own reference"),
)

# Keys that belong to some metrics only, in the order the loader reports them.
METRIC_KEYS = (
    "flag",
    "quantile",
    "attribute",
    "min_label_coverage",
    "fdr",
    "attributes",
    "revoke",
    "min_volume",
    "follow",
    "false_alarm_every",
)
# Keys every metric of a family takes: bias rules test groups (with FDR control, over chosen
# attributes), security rules may name the principal or key to revoke.
FAMILY_KEYS: dict[str, tuple[str, ...]] = {"bias": ("fdr", "attributes"), "security": ("revoke",)}
# The families whose category takes their own metrics only (and whose metrics belong to no other).
EXCLUSIVE_FAMILIES: tuple[Family, ...] = ("bias", "security")
# How a metric's baseline kind narrows its compare's baselines, and why.
BASELINE_NARROWING: dict[str, tuple[tuple[Baseline, ...], str]] = {
    "own_history": (("reference",), "a volume is compared with its principal's or key's own previous 7 days"),
}


def kind(metric: str) -> MetricKind:
    """The row of `metric`; raises KeyError for a name that is no metric."""
    return KINDS[metric]


def metrics_where(**match: object) -> frozenset[str]:
    """The names of the rows whose fields equal `match` (`metrics_where(family="bias")`)."""
    return frozenset(k.name for k in METRICS if all(getattr(k, f) == v for f, v in match.items()))


# --- the derived sets (each once had a literal of its own) ----------------------------------------

# The metric/compare table of the rules contract; the loader refuses every other pair.
METRIC_COMPARES: dict[str, frozenset[str]] = {k.name: frozenset(k.compares) for k in METRICS}
BIAS_METRICS = metrics_where(family="bias")
SECURITY_METRICS = metrics_where(family="security")
# Security metrics compared with the principal's or key's own past; `min_volume` is the absolute
# amount below which that ratio means nothing (3 files read instead of 0 is no theft).
VOLUME_METRICS = metrics_where(baseline="own_history")
CATEGORY_METRICS: dict[str, frozenset[str]] = {f: metrics_where(family=f) for f in EXCLUSIVE_FAMILIES}
MIN_COUNT_THRESHOLD: dict[str, int] = {k.name: k.least_count for k in METRICS if k.least_count is not None}
RATE_METRICS = metrics_where(rate=True)
# Accuracy over labelled predictions (overall or its gap between groups); not to be confused with
# LABEL_METRICS, which adds the false-negative-rate gap (also computed from labels).
PERFORMANCE_METRICS = metrics_where(family="performance")
# Computed from labels: coverage matters, and a baseline has enough samples when it has enough labels.
LABEL_METRICS = metrics_where(needs_labels=True)
COUNTERS: dict[str, str] = {k.name: k.counter for k in METRICS if k.counter is not None}
NO_ROLLBACK_METRICS = metrics_where(rolls_back=False)
# For each metric-specific key, the metrics that take it (and those that must give it).
KEY_METRICS: dict[str, frozenset[str]] = {
    key: frozenset(k.name for k in METRICS if key in k.takes) for key in METRIC_KEYS
}
REQUIRED_KEY_METRICS: dict[str, frozenset[str]] = {
    key: frozenset(k.name for k in METRICS if key in k.required_keys) for key in METRIC_KEYS
}

# The compares that need a baseline, and the baselines each takes.
COMPARE_BASELINES: dict[str, tuple[str, ...]] = {c.name: c.baselines for c in COMPARISONS if c.baselines}
BASELINE_COMPARES = frozenset(COMPARE_BASELINES)
BASELINE_REASONS: dict[str, str] = {c.name: c.baseline_reason for c in COMPARISONS if c.baseline_reason}
# Metrics that narrow their compare's baselines, and why.
METRIC_BASELINES: dict[str, tuple[tuple[str, ...], str]] = {
    k.name: BASELINE_NARROWING[k.baseline] for k in METRICS if k.baseline in BASELINE_NARROWING
}
DOWN_COMPARES = frozenset(c.name for c in COMPARISONS if c.down)
NO_LADDER_COMPARES = frozenset(c.name for c in COMPARISONS if not c.ladder)
