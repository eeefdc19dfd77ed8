"""Failure behaviour on the real services: a killed worker, a rebalance, a Redis outage.
Every case ends with aggregates equal to an independent count: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from monitor.dev.scratch_redis import ScratchRedis
from monitor.settings import Settings
from monitor.store.keys import MINUTE, Keys
from monitor.topics import ensure_topics
from tests.conftest import WorkerProcess, free_port, unique_settings

pytestmark = pytest.mark.integration

MODELS = [f"rel-{i}" for i in range(5)]


def traffic(n: int, now: float) -> list[dict[str, object]]:
    return [
        {
            "model_id": MODELS[i % len(MODELS)],
            "model_version": "1",
            "request_id": f"r{i}",
            "ts": now - (i % 600),
            "positive": i % 3 == 0,
            "latency_ms": 20.0,
            "groups": {"sex": "FM"[i % 2]},
        }
        for i in range(n)
    ]


async def produce_slowly(settings: Settings, events: list[dict[str, object]], per_second: int) -> None:
    """Arrays of 50, paced, so that failures happen in the middle of the stream."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        started = time.monotonic()
        for i, start in enumerate(range(0, len(events), 50)):
            await producer.send(settings.topics.predictions, orjson.dumps(events[start : start + 50]))
            lag = (i + 1) * 50 / per_second - (time.monotonic() - started)
            if lag > 0:
                await asyncio.sleep(lag)
        await producer.flush()
    finally:
        await producer.stop()


async def stored_counts(redis: Redis, keys: Keys) -> Counter[str]:
    counts: Counter[str] = Counter()
    for model in MODELS:
        pattern = keys.bucket(model, "1", MINUTE, 0)[:-1] + "*"
        async for key in redis.scan_iter(match=pattern, count=1000):
            counts[model] += int(await redis.hget(key, "n") or 0)
    return counts


async def wait_for_total(redis: Redis, keys: Keys, total: int, timeout_s: float = 120) -> Counter[str]:
    deadline = time.monotonic() + timeout_s
    counts: Counter[str] = Counter()
    while time.monotonic() < deadline:
        try:
            counts = await stored_counts(redis, keys)
        except RedisConnectionError:  # a Redis this test restarted may still be starting
            await asyncio.sleep(0.5)
            continue
        if sum(counts.values()) >= total:
            await asyncio.sleep(2)  # anything counted twice would show up now
            return await stored_counts(redis, keys)
        await asyncio.sleep(0.5)
    raise AssertionError(f"only {sum(counts.values())} of {total} events were aggregated")


@pytest.fixture
async def redis(services: tuple[str, str]) -> AsyncIterator[Redis]:
    client = Redis.from_url(services[1])
    yield client
    await client.aclose()


def expected(events: list[dict[str, object]]) -> Counter[str]:
    return Counter(str(e["model_id"]) for e in events)


async def test_kill_9_mid_stream_then_restart(
    services: tuple[str, str], redis: Redis, tmp_path: Path
) -> None:
    settings = unique_settings(*services, kafka_session_timeout_s=6)
    await ensure_topics(settings)
    events = traffic(20_000, time.time())
    first = WorkerProcess(settings, tmp_path / "first.log")
    first.start()
    await first.wait_ready()
    producing = asyncio.create_task(produce_slowly(settings, events, per_second=2500))
    await first.wait_metric("aimon_events_ingested_total", 4000, topic=settings.topics.predictions)
    assert (
        first.stop(signal.SIGKILL) == -signal.SIGKILL
    )  # no goodbye: offsets of the last batches are not committed
    second = WorkerProcess(settings.model_copy(update={"web_port": free_port()}), tmp_path / "second.log")
    second.start()
    try:
        await producing
        counts = await wait_for_total(redis, Keys(settings.key_prefix), len(events))
        assert counts == expected(events)
        assert await second.metric("aimon_events_replayed_total", topic=settings.topics.predictions) >= 0
    finally:
        second.stop()


async def test_a_third_worker_joins_mid_stream(
    services: tuple[str, str], redis: Redis, tmp_path: Path
) -> None:
    settings = unique_settings(*services, kafka_session_timeout_s=6)
    await ensure_topics(settings)
    events = traffic(20_000, time.time())
    workers = [
        WorkerProcess(settings.model_copy(update={"web_port": free_port()}), tmp_path / f"w{i}.log")
        for i in range(3)
    ]
    for w in workers[:2]:
        w.start()
    try:
        for w in workers[:2]:
            await w.wait_ready()
        producing = asyncio.create_task(produce_slowly(settings, events, per_second=2500))
        await asyncio.sleep(3)
        workers[2].start()  # the group rebalances while events keep coming
        await producing
        counts = await wait_for_total(redis, Keys(settings.key_prefix), len(events))
        assert counts == expected(events)
        consumed = [
            await w.metric("aimon_messages_consumed_total", topic=settings.topics.predictions)
            for w in workers
        ]
        assert sum(consumed) >= len(events) / 50 and sum(1 for c in consumed if c > 0) >= 2
    finally:
        for w in workers:
            w.stop()


async def test_redis_away_for_twenty_seconds(services: tuple[str, str], tmp_path: Path) -> None:
    """A Redis of this test's own, stopped mid-stream: the worker waits, says so, and loses nothing."""
    own = ScratchRedis(tmp_path)
    own.start()
    await own.wait_up()
    url = own.url
    settings = unique_settings(services[0], url, redis_retry_max_s=2)
    await ensure_topics(settings)
    client = Redis.from_url(url)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    events = traffic(15_000, time.time())
    try:
        await worker.wait_ready()
        producing = asyncio.create_task(produce_slowly(settings, events, per_second=1500))
        await worker.wait_metric("aimon_events_ingested_total", 3000, topic=settings.topics.predictions)
        own.kill(signal.SIGTERM)  # the append-only file keeps what was written, as in production
        await asyncio.sleep(3)
        status, body = await worker.get("/readyz")
        assert status == 503 and '"redis":false' in body.replace(" ", "")
        await asyncio.sleep(17)
        own.start()
        await own.wait_up()
        await producing
        await client.aclose()
        client = Redis.from_url(url)
        counts = await wait_for_total(client, Keys(settings.key_prefix), len(events))
        assert counts == expected(events)
        await worker.wait_ready(timeout_s=30)  # ready again once Redis answers
        assert "Redis unavailable" in worker.log_tail(400) and "holding a batch" in worker.log_tail(400)
    finally:
        worker.stop()
        await client.aclose()
        own.kill(signal.SIGTERM)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MONITOR_RULES_PATH": "/nonexistent/rules"}, "no such rules file"),
        ({"MONITOR_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, "Kafka at 127.0.0.1:1 does not answer"),
        ({"MONITOR_REDIS_URL": "redis://127.0.0.1:1/0"}, "Redis at redis://127.0.0.1:1/0 does not answer"),
        ({"MONITOR_REDIS_URL": "localhost:6379"}, "bad setting MONITOR_REDIS_URL"),
        ({"MONITOR_PARTITIONS": "zero"}, "bad setting MONITOR_PARTITIONS"),
    ],
)
def test_bad_configuration_is_one_clear_line(env: dict[str, str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "run"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("monitor:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


async def test_the_broker_restarts_mid_stream(
    services: tuple[str, str], redis: Redis, tmp_path: Path
) -> None:
    """The broker goes away and comes back (same data): the worker resumes, the counts are exact."""
    from monitor.dev import services as local

    settings = unique_settings(*services, kafka_session_timeout_s=6)
    await ensure_topics(settings)
    events = traffic(12_000, time.time())
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    try:
        await worker.wait_ready()
        await produce_slowly(settings, events[:6000], per_second=3000)
        await worker.wait_metric("aimon_events_ingested_total", 2000, topic=settings.topics.predictions)
        await asyncio.to_thread(local.stop_kafka)
        await asyncio.sleep(5)
        status, _ = await worker.get("/readyz")
        assert status == 503
        await asyncio.to_thread(local.up)
        await produce_slowly(settings, events[6000:], per_second=3000)
        counts = await wait_for_total(redis, Keys(settings.key_prefix), len(events), timeout_s=180)
        assert counts == expected(events)
        await worker.wait_ready()
    finally:
        worker.stop()
