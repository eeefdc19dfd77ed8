"""Creates the monitor's Kafka topics with the configuration the contracts need.

The worker calls this before it starts consuming, so a topic is never auto-created by a producer
with the broker's defaults: inbound topics get the configured partitions and room for large values,
`control` is log-compacted (a restarting gateway reads the latest state per model), and so is
`incidents` (key = incident id): every event of an incident is kept for a week, then at least its
latest one, for as long as the topic exists; that is the incident's record in Kafka. `audit`, the
audit trail's anchor, has one partition (its order is the chain's) and keeps every record for ever
(`retention.ms=-1`, `retention.bytes=-1`); it is not compacted, which would keep one entry per key.

A topic that already exists is not changed, but the two compacted ones are checked: one that is
not `cleanup.policy=compact` is refused (TopicConfigError) with the command that fixes it, and so is
an audit topic that would delete or compact records.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

from monitor.exceptions import ConfigError, ServicesError
from monitor.security import kafka_client_options
from monitor.settings import Settings

log = logging.getLogger(__name__)

TOPIC_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno
UNKNOWN_TOPIC = UnknownTopicOrPartitionError.errno
_DESCRIBE_WAIT_S = 10.0
# An incident's events stay uncompacted this long, so that a reader of the stream sees every one.
INCIDENT_EVENTS_KEPT_MS = 7 * 24 * 3600 * 1000
AUDIT_CONFIG = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}


class TopicConfigError(ConfigError):
    """An existing topic's configuration breaks what the monitor relies on (e.g. an uncompacted control
    topic)."""


def required_configs(settings: Settings) -> dict[str, tuple[str, dict[str, str], str]]:
    """topic -> (its MONITOR_TOPIC_* variable, the configuration it must have, why)."""
    t = settings.topics
    compact = {"cleanup.policy": "compact"}
    return {
        t.control: ("MONITOR_TOPIC_CONTROL", compact, "a restarting gateway reads each model's latest state"),
        t.incidents: ("MONITOR_TOPIC_INCIDENTS", compact, "it keeps each incident's latest state"),
        t.audit: (
            "MONITOR_TOPIC_AUDIT",
            AUDIT_CONFIG,
            "it is the audit trail's anchor: every entry for ever",
        ),
    }


def topic_specs(settings: Settings) -> list[NewTopic]:
    """Every topic with its partitions and configuration."""
    t = settings.topics
    big = {"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)}
    compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    incidents = {"cleanup.policy": "compact", "min.compaction.lag.ms": str(INCIDENT_EVENTS_KEPT_MS)}
    specs = [
        (t.predictions, settings.partitions, big),
        (t.labels, settings.partitions, big),
        (t.access_logs, settings.partitions, big),
        (t.model_registry, settings.partitions, big),
        (t.dead_letters, settings.partitions, big),
        (t.incidents, settings.partitions, incidents),
        (t.control, settings.partitions, compacted),
        (t.audit, 1, AUDIT_CONFIG),
    ]
    return [
        NewTopic(name, partitions, settings.replication_factor, topic_configs=config)
        for name, partitions, config in specs
    ]


async def ensure_topics(settings: Settings, *, timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet and check the existing compacted ones; returns the names
    created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        request_timeout_ms=int(timeout_s * 1000),
        **kafka_client_options(settings),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (TimeoutError, KafkaConnectionError) as exc:
        raise ServicesError(
            f"Kafka at {settings.kafka_bootstrap} does not answer ({exc}); "
            "start it with `monitor services up` or set MONITOR_KAFKA_BOOTSTRAP"
        ) from None
    try:
        response = await admin.create_topics(topic_specs(settings))
        created, existing = [], []
        for name, code, *_ in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code == TOPIC_ALREADY_EXISTS:
                existing.append(name)
            else:
                raise ServicesError(f"could not create topic {name!r}: Kafka error code {code}")
        await _check_existing(admin, settings, existing)
    finally:
        await admin.close()
    if created:
        log.info("created topics %s", ", ".join(created))
    return created


async def _check_existing(admin: AIOKafkaAdminClient, settings: Settings, existing: list[str]) -> None:
    """Refuse an existing topic whose configuration lacks what `required_configs` asks of it."""
    required = {name: need for name, need in required_configs(settings).items() if name in existing}
    if not required:
        return
    found = await _describe(admin, {name: list(configs) for name, (_, configs, _) in required.items()})
    for name, actual in found.items():
        variable, configs, why = required[name]
        for key, value in configs.items():
            if actual.get(key) != value:
                raise TopicConfigError(
                    f"topic {name!r} has {key}={actual.get(key)}, "
                    f"but the monitor needs {key}={value} ({why}); "
                    f"fix it with `kafka-configs.sh --bootstrap-server {settings.kafka_bootstrap} --alter "
                    f"--entity-type topics --entity-name {name} --add-config {key}={value}` "
                    f"or set {variable} to a topic that does not exist yet"
                )


async def _describe(admin: AIOKafkaAdminClient, keys: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """The values of `keys[topic]` of each topic."""
    asked = [
        ConfigResource(ConfigResourceType.TOPIC, name, dict.fromkeys(wanted)) for name, wanted in keys.items()
    ]
    deadline = asyncio.get_running_loop().time() + _DESCRIBE_WAIT_S
    while True:
        found: dict[str, dict[str, str]] = {}
        unknown = False
        for answer in await admin.describe_configs(asked):
            for code, _message, _kind, name, entries in answer.resources:
                if code == UNKNOWN_TOPIC:
                    unknown = True
                elif code != 0:
                    raise ServicesError(
                        f"could not read the configuration of topic {name!r}: Kafka error code {code}"
                    )
                found[name] = {entry[0]: entry[1] for entry in entries}
        if not unknown:
            return found
        # A topic created a moment ago (by another worker, say) may not be in this broker's metadata yet.
        if asyncio.get_running_loop().time() > deadline:
            raise ServicesError(f"the topics {', '.join(keys)} exist but the broker cannot describe them yet")
        await asyncio.sleep(0.2)
