"""`ensure_topics` on the real broker: what it creates, and an existing topic it must refuse."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from monitor.settings import Settings
from monitor.topics import INCIDENT_EVENTS_KEPT_MS, TopicConfigError, ensure_topics
from tests.conftest import unique_settings

pytestmark = pytest.mark.integration

KEYS = ("cleanup.policy", "min.compaction.lag.ms", "max.message.bytes")


async def configs(settings: Settings, *names: str) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        asked = [ConfigResource(ConfigResourceType.TOPIC, name, dict.fromkeys(KEYS)) for name in names]
        return {
            name: {e[0]: e[1] for e in entries}
            for answer in await admin.describe_configs(asked)
            for _, _, _, name, entries in answer.resources
        }
    finally:
        await admin.close()


async def precreate(settings: Settings, name: str, config: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(name, 2, 1, topic_configs=config)])
        assert [code for _, code, *_ in response.topic_errors] == [0]
    finally:
        await admin.close()


async def test_control_and_incidents_are_created_compacted(services: tuple[str, str]) -> None:
    settings = unique_settings(*services)
    t = settings.topics
    created = await ensure_topics(settings)
    assert sorted(created) == sorted(t.model_dump().values())
    found = await configs(settings, t.control, t.incidents, t.predictions)
    assert (found[t.control]["cleanup.policy"], found[t.control]["min.compaction.lag.ms"]) == ("compact", "0")
    # Incidents: compacted by incident id, every event kept a week first.
    assert found[t.incidents]["cleanup.policy"] == "compact"
    assert found[t.incidents]["min.compaction.lag.ms"] == str(INCIDENT_EVENTS_KEPT_MS) == str(7 * 86_400_000)
    assert found[t.predictions]["cleanup.policy"] == "delete"
    assert await ensure_topics(settings) == []  # existing and right: accepted as they are


@pytest.mark.parametrize(
    ("topic", "variable"), [("control", "MONITOR_TOPIC_CONTROL"), ("incidents", "MONITOR_TOPIC_INCIDENTS")]
)
async def test_an_existing_uncompacted_topic_is_refused_in_one_line(
    services: tuple[str, str], topic: str, variable: str
) -> None:
    settings = unique_settings(*services)
    name = getattr(settings.topics, topic)
    await precreate(settings, name, {"cleanup.policy": "delete"})
    with pytest.raises(TopicConfigError) as refused:
        await ensure_topics(settings)
    message = str(refused.value)
    assert message.startswith(
        f"topic {name!r} has cleanup.policy=delete, but the monitor needs cleanup.policy=compact"
    )
    assert (
        f"`kafka-configs.sh --bootstrap-server {settings.kafka_bootstrap} --alter --entity-type topics "
        f"--entity-name {name} --add-config cleanup.policy=compact`"
    ) in message
    assert variable in message and "\n" not in message
    assert (await configs(settings, name))[name]["cleanup.policy"] == "delete"  # refused, not changed


async def test_compact_and_delete_is_not_compacted_enough(services: tuple[str, str]) -> None:
    settings = unique_settings(*services)
    await precreate(settings, settings.topics.control, {"cleanup.policy": "compact,delete"})
    with pytest.raises(TopicConfigError, match="has cleanup.policy=compact,delete, but"):
        await ensure_topics(settings)


async def test_the_worker_refuses_to_start_on_an_uncompacted_control_topic(services: tuple[str, str]) -> None:
    settings = unique_settings(*services)
    await precreate(settings, settings.topics.control, {})  # the broker's default: delete
    run = subprocess.run(
        [sys.executable, "-m", "monitor", "run"],
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"monitor: topic {settings.topics.control!r} has cleanup.policy=delete, but the monitor needs "
        )
    )
