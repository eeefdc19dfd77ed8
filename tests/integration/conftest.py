"""The evaluator's world on the real broker and Redis: a publisher, a reader of what it published,
the default rules and an evidence directory, on topics no other test module uses."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis

from monitor.evaluator import Evaluator
from monitor.publisher import KafkaPublisher
from monitor.rules.loader import default_rules_path, load_rules
from monitor.rules.schema import RuleSet
from monitor.store.keys import Keys
from monitor.store.redis import RedisStore
from monitor.store.windows import WindowReader
from monitor.topics import ensure_topics
from tests.conftest import unique_settings

HOUR, DAY = 3600, 86_400


@dataclass
class Bus:
    """Reads back what the evaluator published, per model."""

    consumer: AIOKafkaConsumer
    control_topic: str
    incidents_topic: str
    seen: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    async def drain(self) -> None:
        tps = [TopicPartition(t, p) for t in (self.control_topic, self.incidents_topic) for p in range(4)]
        end = await self.consumer.end_offsets(tps)
        deadline = time.monotonic() + 15
        while [tp for tp in tps if await self.consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, "could not read the topics to their end"
            for tp, records in (await self.consumer.getmany(timeout_ms=200)).items():
                for record in records:
                    self.seen.setdefault((tp.topic, record.key.decode()), []).append(
                        orjson.loads(record.value)
                    )

    async def control(self, model_id: str) -> list[dict[str, Any]]:
        await self.drain()
        return self.seen.get((self.control_topic, model_id), [])

    async def incidents(self, model_id: str) -> list[dict[str, Any]]:
        await self.drain()
        return [
            e
            for (t, _), events in self.seen.items()
            if t == self.incidents_topic
            for e in events
            if e["model_id"] == model_id
        ]


@dataclass
class World:
    """What an evaluator under test runs against; a test module may subclass it for its own helpers."""

    redis: Redis
    publisher: KafkaPublisher
    bus: Bus
    rules: RuleSet
    evidence: Path

    def store(self, keys: Keys, **options: Any) -> RedisStore:
        """The agents' write path under `keys`, with hour buckets kept long enough for a week's
        baseline; `options` go to RedisStore as they are."""
        return RedisStore(self.redis, keys, **{"minute_ttl_s": 26 * HOUR, "hour_ttl_s": 15 * DAY, **options})

    def evaluator(
        self, keys: Keys, clock: Callable[[], float], rules: RuleSet | None = None, **options: Any
    ) -> Evaluator:
        """An evaluator on `clock` (and `rules`, else the default ones) that always re-reads closed windows;
        `options` go to Evaluator as they are."""
        return Evaluator(
            self.redis,
            keys,
            self.rules if rules is None else rules,
            self.publisher,
            clock=clock,
            reader=WindowReader(self.redis, keys, closed_refresh_s=0),
            evidence_dir=self.evidence,
            **options,
        )


W = TypeVar("W", bound=World)


@asynccontextmanager
async def open_world(services: tuple[str, str], evidence: Path, kind: type[W]) -> AsyncIterator[W]:
    """A `kind` of World on fresh topics, with the default rules; every client is closed on exit."""
    settings = unique_settings(*services)
    await ensure_topics(settings)
    async with AsyncExitStack() as stack:
        publisher = KafkaPublisher(
            settings.kafka_bootstrap,
            control_topic=settings.topics.control,
            incidents_topic=settings.topics.incidents,
        )
        await publisher.start()
        stack.push_async_callback(publisher.stop)
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        # Assigned, not subscribed: no group rebalance to wait for, and every message from offset 0.
        tps = [
            TopicPartition(t, p)
            for t in (settings.topics.control, settings.topics.incidents)
            for p in range(settings.partitions)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        rules = load_rules(default_rules_path())
        redis = Redis.from_url(settings.redis_url)
        stack.push_async_callback(redis.aclose)
        yield kind(
            redis,
            publisher,
            Bus(consumer, settings.topics.control, settings.topics.incidents),
            rules,
            evidence,
        )


@pytest.fixture(scope="module")
async def world(services: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """One World per test module (a module that subclasses World overrides this fixture)."""
    async with open_world(services, tmp_path_factory.mktemp("evidence"), World) as world:
        yield world
