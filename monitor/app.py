"""The one Faust app and its wiring: topics, agents, the web endpoints, health."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, generate_latest
from redis.asyncio import Redis

from monitor.agents.ingest import BatchIngestor, RawMessage
from monitor.agents.lag import AppliedTracker
from monitor.agents.recovery import KafkaRangeReader, Recovery, Watermarks
from monitor.agents.stream import register_ingest_agent, register_progress_reports
from monitor.api import ApiDeps, api_tokens, open_reads, register_api
from monitor.audit import AuditLog
from monitor.audit.anchor import KafkaAnchor, read_anchor
from monitor.audit.secret import audit_secret
from monitor.catchup import SilenceHold
from monitor.evaluator import Evaluator
from monitor.events import (
    AccessEvent,
    EventDecoder,
    LabelEvent,
    PredictionEvent,
    RegistryEvent,
    Rejected,
)
from monitor.exceptions import ServicesError
from monitor.incidents.commands import CommandQueue
from monitor.incidents.delivery import Deliverer
from monitor.incidents.reconcile import ControlReconciler, TopicControlReader
from monitor.incidents.store import IncidentStore
from monitor.metrics import ApiMetrics, CatchUpMetrics, IngestMetrics, NotificationMetrics
from monitor.model_metrics import EvaluatorMetrics, ModelStatsCollector
from monitor.publisher import KafkaPublisher
from monitor.rules.loader import load_rules
from monitor.security import faust_broker_credentials, kafka_client_options, redis_client
from monitor.settings import Settings
from monitor.store.keys import Keys
from monitor.store.lag import LagStore
from monitor.store.redis import TRANSIENT, RedisStore
from monitor.topics import TOPIC_MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 2.0
# aiohttp adds the charset itself and refuses one inside content_type.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4"


@dataclass
class Health:
    """What /readyz reports: the last answer of each dependency."""

    kafka_ok: bool = False
    redis_ok: bool = False
    redis_writes_failing: bool = False
    checked_at: float = 0.0
    detail: dict[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Ready only while Kafka and Redis both answer."""
        return self.kafka_ok and self.redis_ok and not self.redis_writes_failing


class FaustDeadLetters:
    """Dead-letter sink on the `dead-letters` topic; waits for the broker's acknowledgement."""

    def __init__(self, topic: faust.TopicT) -> None:
        self.topic = topic

    async def send(self, rejects: Sequence[tuple[RawMessage, Rejected]]) -> None:
        """Publish every reject with headers `error`, `source-topic`, `source-offset`."""
        pending = []
        for message, rejected in rejects:
            headers = [
                ("error", f"{rejected.reason}: {rejected.detail}"[:2000].encode()),
                ("reason", rejected.reason.encode()),
                ("source-topic", message.topic.encode()),
                ("source-partition", str(message.partition).encode()),
                ("source-offset", str(message.offset).encode()),
            ]
            if rejected.index is not None:
                headers.append(("source-index", str(rejected.index).encode()))
            pending.append(await self.topic.send(key=message.key, value=rejected.raw, headers=headers))
        await asyncio.gather(*pending)


class Monitor:
    """The daemon: a Faust app plus the store, metrics and health it serves."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.registry = CollectorRegistry()
        self.metrics = IngestMetrics(self.registry)
        self.health = Health()
        self.redis: Redis = redis_client(settings, socket_timeout=5.0, socket_connect_timeout=2.0)
        self.store = RedisStore(
            self.redis,
            Keys(settings.key_prefix),
            minute_ttl_s=settings.minute_bucket_ttl_s,
            hour_ttl_s=settings.hour_bucket_ttl_s,
            clock=clock,
        )
        # Set by the evaluation loop: per-model series are exported by the worker that evaluates only.
        self.evaluating = False
        self.model_stats = ModelStatsCollector(self.store, evaluating=lambda: self.evaluating, clock=clock)
        self.registry.register(self.model_stats)
        self.notification_metrics = NotificationMetrics(self.registry)
        self.rules = load_rules(settings.rules_path)
        for warning in self.rules.warnings:
            log.warning("rules: %s", warning)
        self.store.configure(self.rules.ingest_rules())
        # The catch-up hold: every worker reports how far it has applied the predictions topic;
        # the evaluator holds silence rules while any partition is behind (monitor/rules/catchup.py).
        self.catchup_metrics = CatchUpMetrics(self.registry)
        self.lag_store = LagStore(self.redis, Keys(settings.key_prefix))
        self.applied = AppliedTracker(settings.topics.predictions)
        self.silence_hold = SilenceHold(
            self.lag_store,
            settings.topics.predictions,
            self._prediction_partitions,
            caught_up_within_s=settings.caught_up_within_s,
            stale_after_s=settings.lag_report_stale_s,
            metrics=self.catchup_metrics,
        )
        self.publisher = KafkaPublisher(
            settings.kafka_bootstrap,
            control_topic=settings.topics.control,
            incidents_topic=settings.topics.incidents,
            kafka_options=kafka_client_options(settings),
        )
        self.evaluator = Evaluator(
            self.redis,
            Keys(settings.key_prefix),
            self.rules,
            self.publisher,
            clock=clock,
            evidence_dir=settings.evidence_dir,
            contact=settings.incident_contact,
            deliverer=Deliverer(
                alertmanager_url=settings.alertmanager_url,
                webhook_urls=settings.webhook_urls,
                public_url=settings.api_url,
                counters=self.notification_metrics,
            ),
            renotify_s=settings.renotify_s,
            silence_hold=self.silence_hold,
            tick_s=settings.eval_interval_s,
            window_refresh_s=settings.window_refresh_s,
            detector_save_s=settings.detector_save_s,
        )
        self.evaluator_metrics = EvaluatorMetrics(
            self.registry,
            self.rules,
            max_groups=settings.metrics_max_groups,
            evaluating=lambda: self.evaluating,
        )
        self.audit_secret = audit_secret(settings, warn=True)  # an unreadable secret file is refused here
        self.audit = AuditLog(
            self.redis,
            Keys(settings.key_prefix),
            secret=self.audit_secret.value,
            anchor=KafkaAnchor(
                settings.kafka_bootstrap, settings.topics.audit, **kafka_client_options(settings)
            ),
        )
        # After a Redis restart the topics are the record: control seq never goes back, and an audit
        # tail Redis lost is put back from the audit topic.
        self.reconciler = ControlReconciler(
            self.redis,
            IncidentStore(self.redis, Keys(settings.key_prefix)),
            TopicControlReader(
                settings.kafka_bootstrap, settings.topics.control, **kafka_client_options(settings)
            ),
            restore_audit=self._restore_audit,
        )
        self._publisher_started = False
        self.app = self._build_app()
        self._kafka_probe: AIOKafkaClient | None = None

    def _build_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.app_id,
            broker=f"kafka://{s.kafka_bootstrap}",
            broker_credentials=faust_broker_credentials(s),
            store="memory://",
            autodiscover=False,
            web_host=s.web_host,
            web_bind=s.web_host,
            web_port=s.web_port,
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            consumer_auto_offset_reset="earliest",
            producer_max_request_size=TOPIC_MAX_MESSAGE_BYTES,
            consumer_max_fetch_size=TOPIC_MAX_MESSAGE_BYTES,
            broker_commit_interval=1.0,
            broker_session_timeout=s.kafka_session_timeout_s,
            broker_heartbeat_interval=min(3.0, s.kafka_session_timeout_s / 3),
        )
        config = {"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)}
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}

        def topic(name: str) -> faust.TopicT:
            return app.topic(name, value_type=bytes, partitions=s.partitions, config=config, **raw)

        self.dead_letters_topic = topic(s.topics.dead_letters)
        dead_letters = FaustDeadLetters(self.dead_letters_topic)
        watermarks = Watermarks(self.redis, Keys(s.key_prefix))
        read_range = KafkaRangeReader(s.kafka_bootstrap, chunk=s.batch_max_events, **kafka_client_options(s))

        def recovery(name: str) -> Recovery:
            return Recovery(name, watermarks, read_range)

        ingest_options: dict[str, Any] = {
            "retention_s": s.retention_s,
            "retry_max_s": s.redis_retry_max_s,
            "clock": self.clock,
            "on_redis_down": self._on_redis_down,
        }
        self.ingestors: list[BatchIngestor[Any]] = [
            BatchIngestor(
                s.topics.predictions,
                EventDecoder(PredictionEvent, s.max_value_bytes),
                self.store.apply_predictions,
                dead_letters,
                self.metrics,
                recovery=recovery(s.topics.predictions),
                **ingest_options,
            ),
            BatchIngestor(
                s.topics.labels,
                EventDecoder(LabelEvent, s.max_value_bytes),
                self.store.apply_labels,
                dead_letters,
                self.metrics,
                recovery=recovery(s.topics.labels),
                **ingest_options,
            ),
            BatchIngestor(
                s.topics.access_logs,
                EventDecoder(AccessEvent, s.max_value_bytes),
                self.store.apply_access,
                dead_letters,
                self.metrics,
                topic_kind="access",
                recovery=recovery(s.topics.access_logs),
                **ingest_options,
            ),
            BatchIngestor(
                s.topics.model_registry,
                EventDecoder(RegistryEvent, s.max_value_bytes),
                self.store.apply_registry,
                dead_letters,
                self.metrics,
                recovery=recovery(s.topics.model_registry),
                **ingest_options,
            ),
        ]
        for ingestor in self.ingestors:
            register_ingest_agent(
                app,
                topic(ingestor.topic),
                ingestor,
                max_events=s.batch_max_events,
                within_s=s.batch_within_s,
                tracker=self.applied if ingestor.topic == s.topics.predictions else None,
            )
        register_progress_reports(app, self.applied, self.lag_store, self.catchup_metrics, clock=self.clock)

        @app.task  # type: ignore[untyped-decorator]  # faust's decorators are not annotated
        async def declare_outbound_topics() -> None:
            await self.dead_letters_topic.maybe_declare()

        @app.timer(1.0)  # type: ignore[untyped-decorator]  # as above
        async def check_health() -> None:
            await self.check_health()

        @app.task  # type: ignore[untyped-decorator]  # as above
        async def evaluate() -> None:
            # At a fixed rate rather than with a fixed pause between ticks (as app.timer does), so
            # a threshold crossing waits at most one interval for the tick that sees it.
            interval = s.eval_interval_s
            next_at = time.monotonic()
            while True:
                self.evaluating = bool(app.is_leader())
                if self.evaluating:
                    await self.evaluate_once()
                next_at += interval
                now = time.monotonic()
                if now > next_at + interval:
                    next_at = now  # a tick overran by a whole interval: start afresh, no burst
                await asyncio.sleep(max(0.0, next_at - now))

        self._add_views(app)
        keys = Keys(s.key_prefix)
        tokens = api_tokens(s)
        register_api(
            app,
            ApiDeps(
                incidents=IncidentStore(self.redis, keys),
                commands=CommandQueue(self.redis, keys),
                audit=self.audit,
                store=self.store,
                tokens=tokens,
                metrics=ApiMetrics(self.registry, tokens),
                open_reads=open_reads(s, tokens),
                max_body_bytes=s.api_max_body_bytes,
            ),
        )
        return app

    async def evaluate_once(self) -> None:
        """One evaluator tick with its metrics; an outage of Redis or Kafka skips the tick."""
        m = self.evaluator_metrics
        try:
            if not self._publisher_started:
                await self.publisher.start()
                self._publisher_started = True
            await self.reconciler.check()
            report = await self.evaluator.tick()
        except (*TRANSIENT, KafkaError, ServicesError) as exc:  # ServicesError: Kafka away (the reconciler)
            m.tick_errors.inc()
            log.warning("evaluation skipped: %s: %s", type(exc).__name__, exc)
            return
        m.tick_seconds.observe(report.seconds)
        for incident in report.opened:
            m.opened.labels(incident.category, incident.severity).inc()
            last = report.last_event_s.get(incident.model_id)
            if last is not None and incident.rule != "downtime":
                m.detection_lag.observe(max(0.0, incident.opened_at - last))
        m.record(report)

    async def _restore_audit(self) -> int:
        """Append back the audit entries the audit topic has past the end of Redis's list."""
        s = self.settings
        anchor = await read_anchor(s.kafka_bootstrap, s.topics.audit, **kafka_client_options(s))
        return await self.audit.restore(anchor or [])

    def _prediction_partitions(self) -> int:
        """The predictions topic's partition count, from the consumer's metadata once it has it."""
        try:
            known = self.app.consumer.topic_partitions(self.settings.topics.predictions)
        except Exception:  # the consumer is not started yet: faust raises its own errors here
            known = None
        return int(known) if known else self.settings.partitions

    def _on_redis_down(self, down: bool) -> None:
        self.health.redis_writes_failing = down

    async def check_health(self) -> Health:
        """Ask Redis for a PING and Kafka for metadata; record and return the answers."""
        health = self.health
        for _ in (1, 2):
            try:
                await asyncio.wait_for(self.redis.ping(), HEALTH_TIMEOUT_S)
                health.redis_ok = True
                health.detail.pop("redis", None)
                break
            except (TimeoutError, *TRANSIENT) as exc:
                # After a Redis restart the pool still holds connections the server closed: the
                # first ping fails and drops one; only a second failure means Redis is away.
                health.redis_ok = False
                health.detail["redis"] = f"{type(exc).__name__}: {exc}"
        try:
            if self._kafka_probe is None:
                self._kafka_probe = AIOKafkaClient(
                    bootstrap_servers=self.settings.kafka_bootstrap, **kafka_client_options(self.settings)
                )
                await asyncio.wait_for(self._kafka_probe.bootstrap(), HEALTH_TIMEOUT_S)
                # Ask for one topic's metadata, not the whole cluster's: on a broker with hundreds
                # of topics, decoding all of them every second cost a few % of the worker's CPU.
                self._kafka_probe.add_topic(self.settings.topics.predictions)
            if not await asyncio.wait_for(self._kafka_probe.force_metadata_update(), HEALTH_TIMEOUT_S):
                raise KafkaError("no broker answered a metadata request")
            health.kafka_ok = True
            health.detail.pop("kafka", None)
        except Exception as exc:  # any failure of the probe means "Kafka does not answer"
            health.kafka_ok = False
            health.detail["kafka"] = f"{type(exc).__name__}: {exc}"
            if self._kafka_probe is not None:
                await self._kafka_probe.close()
                self._kafka_probe = None
        health.checked_at = self.clock()
        self.metrics.ready.set(1 if health.ready else 0)
        return health

    def _add_views(self, app: faust.App) -> None:
        monitor = self

        @app.page("/healthz")
        async def healthz(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
            return web.json({"status": "ok"})

        @app.page("/readyz")
        async def readyz(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
            health = await monitor.check_health()
            body = {
                "ready": health.ready,
                "kafka": health.kafka_ok,
                "redis": health.redis_ok,
                "redis_writes_failing": health.redis_writes_failing,
                "detail": health.detail,
            }
            return web.json(body, status=200 if health.ready else 503)

        @app.page("/metrics")
        async def metrics(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
            try:
                await monitor.model_stats.refresh()
            except TRANSIENT as exc:
                log.warning("metrics scrape without model gauges: Redis unavailable (%s)", exc)
            return web.bytes(generate_latest(monitor.registry), content_type=PROMETHEUS_CONTENT_TYPE)
