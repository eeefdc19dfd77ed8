"""Prometheus metrics: process counters on every worker; per-model series on the evaluating worker only.

Everything registers on an injected `CollectorRegistry` (never the global one), so tests and several
apps in one process do not collide. Names: prefix `aimon_`, seconds for time, `_total` for counters.
docs/metrics.md defines every series (type, labels, window, what counts).

Per-model series (the evaluator's gauges and the counters read from Redis) describe the cluster,
not the process: only the worker that evaluates exports them, so a sum over instances never
counts a model twice and a worker that stopped evaluating leaves no stale value behind.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitor.aggregates import histogram

CATEGORIES = ("performance", "availability", "output_quality", "bias", "security")
SEVERITIES = ("MEDIUM", "HIGH", "CRITICAL")
CHANNELS = ("alertmanager", "webhook")
OTHER_GROUP = "_other"
MODEL_WINDOW_S = 300  # the per-model request gauges' window, besides the error-rate rules' own
# Classic histogram edges: every 8th edge of the internal log buckets (growth 2^(1/8)), i.e. the
# powers of two from 0.1 ms to 52.4 s. Each `le` is an exact edge of the internal histogram, so the
# cumulative counts are exact; 21 series per version instead of 162 bound the cardinality. The top
# internal bucket also holds everything slower than its edge, so it only feeds +Inf.
LATENCY_EDGES = tuple(range(0, histogram.BUCKETS - 1, histogram.STEPS_PER_DOUBLING))


def window_label(seconds: int) -> str:
    """A window as a label value in the rules file's own units: 300 -> "5m", 86400 -> "24h"."""
    if seconds % 86_400 == 0 and seconds > 86_400:
        return f"{seconds // 86_400}d"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


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
        self.recovered = Counter(
            "aimon_events_recovered_total",
            "Events read again from Kafka and applied because Redis had lost them (a crash that lost "
            "its last writes); the applied ones are counted in aimon_events_ingested_total too.",
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
        self.ready = Gauge("aimon_ready", "1 while Kafka and Redis both answer, else 0.", registry=registry)


class NotificationMetrics:
    """Deliveries of incident notifications to Alertmanager and webhooks (on the evaluating worker)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.delivered = Counter(
            "aimon_notification_deliveries_total",
            "Notifications a receiver accepted (a 2xx answer, after retries).",
            ["channel"],
            registry=registry,
        )
        self.failed = Counter(
            "aimon_notification_failures_total",
            "Notifications given up after the last retry (the receiver never accepted them).",
            ["channel"],
            registry=registry,
        )
        for channel in CHANNELS:  # at 0 from the start, so the first failure shows in increase()
            self.delivered.labels(channel)
            self.failed.labels(channel)


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
