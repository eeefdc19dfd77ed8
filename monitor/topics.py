"""Creates the monitor's Kafka topics with the configuration the contracts need.

The worker calls this before it starts consuming, so a topic is never auto-created by a producer
with the broker's defaults: inbound topics get the configured partitions and room for large values,
`control` is log-compacted (a restarting gateway reads the latest state per model).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from monitor.exceptions import ServicesError
from monitor.settings import Settings

log = logging.getLogger(__name__)

TOPIC_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


def topic_specs(settings: Settings) -> list[NewTopic]:
    """Every topic with its partitions and configuration."""
    t = settings.topics
    big = {"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)}
    compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    specs = [
        (t.predictions, settings.partitions, big),
        (t.labels, settings.partitions, big),
        (t.access_logs, settings.partitions, big),
        (t.model_registry, settings.partitions, big),
        (t.dead_letters, settings.partitions, big),
        (t.incidents, settings.partitions, {}),
        (t.control, settings.partitions, compacted),
    ]
    return [
        NewTopic(name, partitions, settings.replication_factor, topic_configs=config)
        for name, partitions, config in specs
    ]


async def ensure_topics(settings: Settings, *, timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (KafkaConnectionError, asyncio.TimeoutError) as exc:
        raise ServicesError(
            f"Kafka at {settings.kafka_bootstrap} does not answer ({exc}); "
            "start it with `monitor services up` or set MONITOR_KAFKA_BOOTSTRAP"
        ) from None
    try:
        response = await admin.create_topics(topic_specs(settings))
    finally:
        await admin.close()
    created = []
    for name, code, *_ in response.topic_errors:
        if code == 0:
            created.append(name)
        elif code != TOPIC_ALREADY_EXISTS:
            raise ServicesError(f"could not create topic {name!r}: Kafka error code {code}")
    if created:
        log.info("created topics %s", ", ".join(created))
    return created
