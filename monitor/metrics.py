"""Prometheus metrics: process counters, and per-model gauges read from Redis at scrape time.

Everything registers on an injected `CollectorRegistry` (never the global one), so tests and several
apps in one process do not collide. Names: prefix `aimon_`, seconds for time, `_total` for counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor.aggregates.window import WindowStats
from monitor.store.redis import RedisStore

QUANTILES = (0.5, 0.95, 0.99)


class IngestMetrics:
    """Counters of what the agents consumed, applied and dead-lettered."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "aimon_messages_consumed_total", "Kafka messages consumed.", ["topic"], registry=registry
        )
        self.events = Counter(
            "aimon_events_ingested_total",
            "Events applied to the Redis aggregates.",
            ["topic"],
            registry=registry,
        )
        self.replayed = Counter(
            "aimon_events_replayed_total",
            "Events skipped because an earlier delivery of the same offsets was already applied.",
            ["topic"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "aimon_dead_letters_total",
            "Values (or array elements) sent to the dead-letter topic.",
            ["topic", "reason"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "aimon_batch_write_seconds",
            "Time to apply one consumed batch to Redis, retries included.",
            ["topic"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.details = Counter(
            "aimon_ingest_outcomes_total",
            "What the ingest scripts did beyond counting: labels_matched, labels_waiting, "
            "new_principal, new_source, integrity_checks, tampered.",
            ["topic", "outcome"],
            registry=registry,
        )
        self.access_denied = Counter(
            "aimon_access_denied_total", "Access-log events whose outcome was denied.", registry=registry
        )
        self.redis_retries = Counter(
            "aimon_redis_retries_total",
            "Batch writes retried because Redis did not answer.",
            registry=registry,
        )
        self.ready = Gauge(
            "aimon_ready", "1 while Kafka and Redis both answer, else 0.", registry=registry
        )


class EvaluatorMetrics:
    """What the evaluator saw and did, set on the leader after every tick."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tick_seconds = Histogram(
            "aimon_evaluator_tick_seconds",
            "Duration of one evaluation of every rule against every model.",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.tick_errors = Counter(
            "aimon_evaluator_errors_total", "Ticks that failed (Redis or Kafka unavailable).", registry=registry
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
        for category in ("performance", "availability", "output_quality", "bias", "security"):
            for severity in ("MEDIUM", "HIGH", "CRITICAL"):
                self.opened.labels(category, severity)
        self.open = Gauge(
            "aimon_incidents_open", "Incidents not resolved.", ["category", "severity"], registry=registry
        )
        self.level = Gauge(
            "aimon_escalation_level", "Escalation level per model (0 normal … 4 paused).", ["model_id"], registry=registry
        )
        self.accuracy = Gauge(
            "aimon_model_accuracy", "Correct / labelled predictions.", ["model_id", "version", "window"], registry=registry
        )
        group_labels = ["model_id", "version", "attribute", "group"]
        self.disparate_impact = Gauge(
            "aimon_disparate_impact_ratio",
            "A group's favourable rate / its reference group's (the 80 % rule).",
            group_labels,
            registry=registry,
        )
        self.favourable_rate = Gauge(
            "aimon_group_favourable_rate", "Favourable decisions / decisions of a group.", group_labels, registry=registry
        )
        self.false_negative_rate = Gauge(
            "aimon_group_false_negative_rate",
            "Labelled favourable cases decided unfavourably / labelled favourable cases, per group.",
            group_labels,
            registry=registry,
        )
        self.coverage = Gauge(
            "aimon_model_label_coverage",
            "Labelled / answered predictions.",
            ["model_id", "version", "window"],
            registry=registry,
        )


@dataclass(frozen=True)
class ModelSnapshot:
    """One model version's recent window, as read from Redis for one scrape."""

    model_id: str
    version: str
    stats: WindowStats
    last_event_s: float | None


class ModelStatsCollector(Collector):
    """Per-model gauges over the last `window_s` seconds, refreshed from Redis before each scrape.

    `collect()` is synchronous (prometheus_client calls it inside `generate_latest`), so the scrape
    handler awaits `refresh()` first and `collect()` turns that snapshot into metric families.
    """

    def __init__(self, store: RedisStore, *, window_s: int = 300, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.window_s = window_s
        self.clock = clock
        self._snapshot: list[ModelSnapshot] = []

    @property
    def window_label(self) -> str:
        """The window as a Prometheus label value, e.g. "5m"."""
        return f"{self.window_s // 60}m" if self.window_s % 60 == 0 else f"{self.window_s}s"

    async def refresh(self) -> None:
        """Read every model version's window from Redis."""
        now = self.clock()
        snapshot: list[ModelSnapshot] = []
        for model_id in await self.store.model_ids():
            last = await self.store.last_event_s(model_id)
            for version, newest in (await self.store.versions(model_id)).items():
                if newest < now - self.window_s - 60:
                    continue  # an old version with nothing in the window: no series, not zeros
                stats = await self.store.window(model_id, version, now - self.window_s, now + 60)
                snapshot.append(ModelSnapshot(model_id, version, stats, last))
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Metric families of the last snapshot."""
        labels = ["model_id", "version", "window"]
        predictions = GaugeMetricFamily(
            "aimon_model_predictions", "Predictions in the window.", labels=labels
        )
        errors = GaugeMetricFamily(
            "aimon_model_error_ratio", "Errored requests / requests in the window.", labels=labels
        )
        latency = GaugeMetricFamily(
            "aimon_model_latency_seconds",
            "Latency quantiles in the window (from the merged log-bucket histogram).",
            labels=[*labels, "quantile"],
        )
        last_event = GaugeMetricFamily(
            "aimon_model_last_event_timestamp_seconds",
            "Event time of the model's newest prediction.",
            labels=["model_id"],
        )
        seen: set[str] = set()
        for snap in self._snapshot:
            values = [snap.model_id, snap.version, self.window_label]
            predictions.add_metric(values, snap.stats.count)
            if snap.stats.error_rate is not None:
                errors.add_metric(values, snap.stats.error_rate)
            for q in QUANTILES:
                value = snap.stats.latency_quantile_s(q)
                if value is not None:
                    latency.add_metric([*values, str(q)], value)
            if snap.last_event_s is not None and snap.model_id not in seen:
                seen.add(snap.model_id)
                last_event.add_metric([snap.model_id], snap.last_event_s)
        yield from (predictions, errors, latency, last_event)


class CatchUpMetrics:
    """How far behind its input the monitor is (the catch-up hold, `monitor.rules.catchup`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.consumer_lag = Gauge(
            "aimon_consumer_lag_seconds",
            "Age of the newest record applied from a partition this worker owns while records past "
            "it exist (0 when caught up); absent while unknown.",
            ["topic", "partition"],
            registry=registry,
        )
        self.detection_delay = Gauge(
            "aimon_detection_delay_seconds",
            "How far behind the predictions input the evaluator judges (max over partitions; for a "
            "partition without a fresh report, the time since its last one). Set on the leader.",
            registry=registry,
        )
        self.silence_held = Gauge(
            "aimon_silence_rules_held",
            "1 while silence rules (downtime) hold because the monitor is behind its input, else 0.",
            registry=registry,
        )
