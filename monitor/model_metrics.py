"""Per-model series: the evaluator's gauges and the counters read from Redis, exported only by the
worker that evaluates (a sum over instances then never counts a model twice). docs/metrics.md defines
every series."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor.aggregates import histogram
from monitor.aggregates.predictions import COUNT, ERRORS, LATENCY_PREFIX, LATENCY_SUM_US
from monitor.aggregates.window import GroupStats
from monitor.metrics import (
    CATEGORIES,
    LATENCY_EDGES,
    MODEL_WINDOW_S,
    OTHER_GROUP,
    SEVERITIES,
    window_label,
)
from monitor.rules.schema import RuleSet
from monitor.store.redis import RedisStore

if TYPE_CHECKING:  # the evaluator reports to these metrics; importing it here would loop
    from monitor.evaluator import TickReport


class WhileEvaluating(Collector):
    """Exports another registry's metrics only while `evaluating()` says this worker evaluates."""

    def __init__(self, inner: CollectorRegistry, evaluating: Callable[[], bool]) -> None:
        self.inner = inner
        self.evaluating = evaluating

    def collect(self) -> Iterator[Metric]:
        """The inner registry's families, or nothing."""
        if self.evaluating():
            yield from self.inner.collect()


@dataclass(frozen=True)
class MetricWindows:
    """Which windows each family of evaluator gauges is exported for: the windows of the rules that
    judge the same quantity, so a gauge shows what its rule sees (and is labelled with that window)."""

    model_s: tuple[int, ...]  # requests and error ratio
    accuracy_s: tuple[int, ...]  # accuracy and label coverage
    favourable_s: tuple[int, ...]  # per-group favourable rate
    labelled_groups_s: tuple[int, ...]  # per-group accuracy and false-negative rate

    @classmethod
    def of(cls, rules: RuleSet) -> MetricWindows:
        """The windows of a rule set (with 5 min and 24 h always there for the model gauges)."""

        def windows(metrics: set[str], *always: int) -> tuple[int, ...]:
            return tuple(sorted({*always, *(r.window_s for r in rules.rules if r.metric in metrics)}))

        return cls(
            model_s=windows({"error_rate"}, MODEL_WINDOW_S),
            accuracy_s=windows({"accuracy"}, 86_400),
            favourable_s=windows({"disparate_impact", "group_shift"}),
            labelled_groups_s=windows({"fnr_gap", "accuracy_gap"}),
        )


def bounded_groups(
    groups: Mapping[str, GroupStats], max_groups: int, *, only: Iterable[str] | None = None
) -> tuple[dict[str, GroupStats], dict[str, GroupStats]]:
    """(shown, folded): the `max_groups` groups with most requests (of `only`, if given) and the rest."""
    allowed = set(groups) if only is None else set(only) & set(groups)
    ranked = sorted(allowed, key=lambda name: (-groups[name].count, name))[:max_groups]
    shown = {name: groups[name] for name in ranked}
    return shown, {name: g for name, g in groups.items() if name not in shown}


def pooled(groups: Iterable[GroupStats]) -> GroupStats:
    """The counts of several groups as one population."""
    members = list(groups)
    return GroupStats(**{f.name: sum(getattr(g, f.name) for g in members) for f in fields(GroupStats)})


class EvaluatorMetrics:
    """What the evaluator saw and did: counters of this process, and gauges set after every tick."""

    def __init__(
        self,
        registry: CollectorRegistry,
        rules: RuleSet,
        *,
        max_groups: int = 20,
        evaluating: Callable[[], bool] = lambda: True,
    ) -> None:
        self.rules = rules
        self.windows = MetricWindows.of(rules)
        # Fixed once the rules are loaded: which attributes have group series, over which windows.
        self._attributes = self._group_attributes()
        self._group_windows_s = tuple(sorted({*self.windows.favourable_s, *self.windows.labelled_groups_s}))
        self.max_groups = max_groups
        self.tick_seconds = Histogram(
            "aimon_evaluator_tick_seconds",
            "Duration of one evaluation of every rule against every model.",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.tick_errors = Counter(
            "aimon_evaluator_errors_total",
            "Ticks that failed (Redis or Kafka unavailable).",
            registry=registry,
        )
        self.detection_lag = Histogram(
            "aimon_detection_lag_seconds",
            "From the newest event of the model to the tick that opened an incident on it.",
            registry=registry,
            buckets=(0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60),
        )
        self.opened = Counter(
            "aimon_incidents_opened_total", "Incidents opened.", ["category", "severity"], registry=registry
        )
        # Every labelled counter exists from the start at 0, so the first increment shows in increase().
        for category in CATEGORIES:
            for severity in SEVERITIES:
                self.opened.labels(category, severity)
        # The gauges describe the cluster's models: exported only while this worker evaluates.
        self.gauges = CollectorRegistry()
        registry.register(WhileEvaluating(self.gauges, evaluating))
        gauges = self.gauges
        self.open = Gauge(
            "aimon_incidents_open", "Incidents not resolved.", ["category", "severity"], registry=gauges
        )
        self.level = Gauge(
            "aimon_escalation_level",
            "Escalation level per model (0 normal … 4 paused).",
            ["model_id"],
            registry=gauges,
        )
        window_labels = ["model_id", "version", "window"]
        self.predictions = Gauge(
            "aimon_model_predictions",
            "Requests (predictions, errored ones included) in the window.",
            window_labels,
            registry=gauges,
        )
        self.error_ratio = Gauge(
            "aimon_model_error_ratio",
            "Errored requests / requests in the window.",
            window_labels,
            registry=gauges,
        )
        self.accuracy = Gauge(
            "aimon_model_accuracy",
            "Correct / labelled predictions in the window.",
            window_labels,
            registry=gauges,
        )
        self.coverage = Gauge(
            "aimon_model_label_coverage",
            "Labelled / answered (not errored) predictions in the window.",
            window_labels,
            registry=gauges,
        )
        group_labels = ["model_id", "version", "attribute", "group", "window"]
        self.disparate_impact = Gauge(
            "aimon_disparate_impact_ratio",
            "A group's favourable rate / its reference group's (the 80 % rule), "
            "as the rule of that window computed it.",
            group_labels,
            registry=gauges,
        )
        self.favourable_rate = Gauge(
            "aimon_group_favourable_rate",
            "Favourable decisions / decisions of a group (errored requests are no decisions).",
            group_labels,
            registry=gauges,
        )
        self.group_accuracy = Gauge(
            "aimon_group_accuracy",
            "Correct / labelled predictions of a group.",
            group_labels,
            registry=gauges,
        )
        self.false_negative_rate = Gauge(
            "aimon_group_false_negative_rate",
            "Labelled favourable cases decided unfavourably / labelled favourable cases, per group.",
            group_labels,
            registry=gauges,
        )

    def record(self, report: TickReport) -> None:
        """Set every gauge from one tick; series of models, versions and groups gone since vanish."""
        self.open.clear()
        for category in CATEGORIES:  # every label set, at 0 when nothing is open: no gaps in a graph
            for severity in SEVERITIES:
                self.open.labels(category, severity).set(0)
        for incident in report.live:
            self.open.labels(incident.category, incident.severity).inc()
        self.level.clear()
        for model_id, level in report.levels.items():
            self.level.labels(model_id).set(level)
        for gauge in (self.predictions, self.error_ratio, self.accuracy, self.coverage):
            gauge.clear()
        for (model_id, version), windows in report.windows.items():
            for window_s in self.windows.model_s:
                stats = windows.window(window_s)
                labels = (model_id, version, window_label(window_s))
                self.predictions.labels(*labels).set(stats.count)
                if stats.error_rate is not None:
                    self.error_ratio.labels(*labels).set(stats.error_rate)
            for window_s in self.windows.accuracy_s:
                stats = windows.window(window_s)
                labels = (model_id, version, window_label(window_s))
                if stats.accuracy is not None:
                    self.accuracy.labels(*labels).set(stats.accuracy)
                if stats.label_coverage is not None:
                    self.coverage.labels(*labels).set(stats.label_coverage)
        self._record_groups(report)

    def _group_attributes(self) -> list[tuple[str, bool]]:
        """(attribute, is_proxy): the declared ones, and those an accuracy-gap rule names."""
        declared = self.rules.fairness.attributes("all")
        names = {attr for attr, _ in declared}
        named = {r.attribute for r in self.rules.rules if r.metric == "accuracy_gap" and r.attribute}
        return sorted({*declared, *((a, False) for a in named if a not in names)})

    def _record_groups(self, report: TickReport) -> None:
        gauges = (self.disparate_impact, self.favourable_rate, self.group_accuracy, self.false_negative_rate)
        for gauge in gauges:
            gauge.clear()
        # Flagged: a group a bias rule fired on this tick, or one an open incident is about.
        flagged: dict[tuple[str, str, str], set[str]] = {}
        for finding in report.findings:
            obs = finding.observation
            if finding.fired and "attribute" in obs and "group" in obs:
                flagged.setdefault((finding.model_id, finding.version or "", obs["attribute"]), set()).add(
                    obs["group"]
                )
        for incident in report.live:
            if incident.category == "bias" and incident.group and "=" in incident.group:
                attr, _, group = incident.group.partition("=")
                flagged.setdefault((incident.model_id, incident.model_version or "", attr), set()).add(group)
        shown_at: dict[tuple[str, str, str, int], set[str]] = {}
        for (model_id, version), windows in report.windows.items():
            for window_s in self._group_windows_s:
                stats = windows.window(window_s)
                for attr, is_proxy in self._attributes:
                    groups = stats.groups.get(attr)
                    if not groups:
                        continue
                    # A proxy (zip3 and the like) has hundreds of values: only those a rule flagged
                    # are shown by name; the rest, like the tail of any attribute, are pooled.
                    only = flagged.get((model_id, version, attr), set()) if is_proxy else None
                    shown, folded = bounded_groups(groups, self.max_groups, only=only)
                    shown_at[(model_id, version, attr, window_s)] = set(shown)
                    rows = list(shown.items())
                    if folded:
                        rows.append((OTHER_GROUP, pooled(folded.values())))
                    for name, g in rows:
                        labels = (model_id, version, attr, name, window_label(window_s))
                        if window_s in self.windows.favourable_s and g.decisions:
                            self.favourable_rate.labels(*labels).set(g.favourable / g.decisions)
                        if window_s in self.windows.labelled_groups_s:
                            if g.accuracy is not None:
                                self.group_accuracy.labels(*labels).set(g.accuracy)
                            if g.actual_positive:
                                self.false_negative_rate.labels(*labels).set(
                                    g.false_negative / g.actual_positive
                                )
        self._record_impact(report, shown_at)

    def _record_impact(self, report: TickReport, shown_at: dict[tuple[str, str, str, int], set[str]]) -> None:
        """Disparate impact ratios of the windows the disparate-impact rules watch: each group's
        favourable rate over the reference group's (the declared one, else the most favoured group
        with enough decisions). A group not shown by name counts towards `_other`, which holds the
        lowest ratio of those groups (the one that matters for the 80 % rule)."""
        rules = [r for r in self.rules.rules if r.metric == "disparate_impact"]
        for (model_id, version), windows in report.windows.items():
            for rule in rules:
                stats = windows.window(rule.window_s)
                for attr, _ in self.rules.fairness.attributes(rule.attributes):
                    sized = {
                        n: g for n, g in stats.groups.get(attr, {}).items() if g.decisions >= rule.min_samples
                    }
                    declared = (
                        self.rules.fairness.protected[attr].reference
                        if attr in self.rules.fairness.protected
                        else None
                    )
                    rates = {n: g.favourable / g.decisions for n, g in sized.items()}
                    reference = (
                        declared if declared in rates else max(rates, key=rates.__getitem__, default=None)
                    )
                    if reference is None or not rates[reference]:
                        continue
                    shown = shown_at.get((model_id, version, attr, rule.window_s), set())
                    window = window_label(rule.window_s)
                    lowest_other = math.inf
                    for name, rate in rates.items():
                        if name == reference:
                            continue
                        if name in shown:
                            self.disparate_impact.labels(model_id, version, attr, name, window).set(
                                rate / rates[reference]
                            )
                        else:
                            lowest_other = min(lowest_other, rate / rates[reference])
                    if math.isfinite(lowest_other):
                        self.disparate_impact.labels(model_id, version, attr, OTHER_GROUP, window).set(
                            lowest_other
                        )


class ModelStatsCollector(Collector):
    """Per-model counters (requests, errors, a latency histogram) read from Redis before each scrape.

    They only grow (Redis keeps per-version totals beside the buckets), so PromQL can `rate()` them.
    `collect()` is synchronous (prometheus_client calls it inside `generate_latest`), so the scrape
    handler awaits `refresh()` first and `collect()` turns that snapshot into metric families.
    """

    def __init__(
        self,
        store: RedisStore,
        *,
        evaluating: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.evaluating = evaluating
        self.clock = clock
        self._totals: Mapping[str, Mapping[str, Mapping[str, int]]] = {}
        self._last_event: dict[str, float] = {}

    async def refresh(self) -> None:
        """Read every model's totals and newest event time from Redis (nothing unless evaluating)."""
        if not self.evaluating():
            self._totals, self._last_event = {}, {}
            return
        model_ids = await self.store.model_ids()
        self._totals = await self.store.totals(model_ids)
        self._last_event = await self.store.last_events(model_ids)

    def collect(self) -> Iterator[Metric]:
        """Metric families of the last snapshot (none on a worker that does not evaluate)."""
        if not self.evaluating():
            return
        labels = ["model_id", "version"]
        requests = CounterMetricFamily(
            "aimon_model_predictions",
            "Requests (predictions, errored ones included) since the version's first.",
            labels=labels,
        )
        errors = CounterMetricFamily(
            "aimon_model_errors", "Errored requests since the version's first.", labels=labels
        )
        latency = HistogramMetricFamily(
            "aimon_model_latency_seconds",
            "Latency of requests that reported one (classic buckets at powers of two from 0.1 ms).",
            labels=labels,
        )
        for model_id, versions in sorted(self._totals.items()):
            for version, totals in sorted(versions.items()):
                values = [model_id, version]
                requests.add_metric(values, totals.get(COUNT, 0))
                errors.add_metric(values, totals.get(ERRORS, 0))
                latency.add_metric(values, latency_buckets(totals), totals.get(LATENCY_SUM_US, 0) / 1e6)
        last_event = GaugeMetricFamily(
            "aimon_model_last_event_timestamp_seconds",
            "Event time of the model's newest prediction.",
            labels=["model_id"],
        )
        for model_id, seconds in sorted(self._last_event.items()):
            last_event.add_metric([model_id], seconds)
        yield from (requests, errors, latency, last_event)


def latency_buckets(totals: Mapping[str, int]) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs of a version's latency totals, at `LATENCY_EDGES`, then +Inf."""
    counts = [0] * histogram.BUCKETS
    for name, value in totals.items():
        if name.startswith(LATENCY_PREFIX):
            counts[int(name[len(LATENCY_PREFIX) :])] += value
    pairs: list[tuple[str, float]] = []
    seen = 0
    done = 0
    for edge in LATENCY_EDGES:
        seen += sum(counts[done : edge + 1])
        done = edge + 1
        pairs.append((repr(round(histogram.upper_bound_ms(edge) / 1000.0, 7)), seen))
    pairs.append(("+Inf", sum(counts)))
    return pairs
