"""Prediction ingest on the real broker and Redis: exact aggregates, dead letters, replays, /metrics."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from redis.asyncio import Redis

from monitor.aggregates import histogram
from monitor.aggregates.predictions import group_field
from monitor.settings import Settings
from monitor.store.keys import HOUR, MINUTE, Keys
from monitor.topics import ensure_topics
from tests.conftest import WorkerProcess, unique_settings

pytestmark = pytest.mark.integration

MODELS = {"credit": ["1.0", "1.1"], "hiring": ["7"], "claims": ["2024-10", "2025-01"]}
RECENT_MODEL = "fraud"  # every event in the last 30 s, so the 5-minute gauge must show all of them
N_EVENTS = 10_000


@dataclass
class Deployment:
    settings: Settings
    worker: WorkerProcess
    redis: Redis
    producer: AIOKafkaProducer

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.key_prefix)


@pytest.fixture(scope="module")
async def deployment(
    services: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    settings = unique_settings(*services)
    await ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path_factory.mktemp("worker") / "worker.log")
    worker.start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, max_request_size=8 * 1024 * 1024)
    await producer.start()
    redis = Redis.from_url(settings.redis_url)
    try:
        await worker.wait_ready()
        yield Deployment(settings, worker, redis, producer)
    finally:
        worker.stop()
        await producer.stop()
        await redis.aclose()


def make_events(now: float) -> list[dict[str, Any]]:
    rng = random.Random(42)
    events = []
    for i in range(N_EVENTS):
        if i % 10 == 0:
            model, version, ts = RECENT_MODEL, "3", now - rng.uniform(0, 30)
        else:
            model = rng.choice(list(MODELS))
            version, ts = rng.choice(MODELS[model]), now - rng.uniform(0, 2 * 3600)
        event: dict[str, Any] = {
            "model_id": model,
            "model_version": version,
            "request_id": f"r{i}",
            "ts": ts,
            "groups": {"sex": rng.choice("FMX"), "age_band": rng.choice(["18-24", "25-34", "65+"])},
        }
        if rng.random() < 0.03:
            event["error"] = rng.choice([True, "timeout"])
        else:
            event["positive"] = rng.random() < 0.6
            event["confidence"] = rng.random()
        if rng.random() < 0.9:
            event["latency_ms"] = rng.lognormvariate(3.5, 0.6)
        if rng.random() < 0.05:
            event["flags"] = rng.sample(["toxic", "gibberish", "known_false"], 2)
        events.append(event)
    return events


def expected_counters(events: list[dict[str, Any]]) -> dict[tuple[str, str], Counter[str]]:
    """Counted here from the produced dicts, independently of the monitor's fold."""
    expected: dict[tuple[str, str], Counter[str]] = {}
    for e in events:
        c = expected.setdefault((e["model_id"], e["model_version"]), Counter())
        failed = bool(e.get("error"))
        c["n"] += 1
        c["err"] += failed
        if "positive" in e:
            c["dec"] += 1
            c["pos"] += e["positive"]
        for attr, value in e["groups"].items():
            c[group_field(attr, value, "n")] += 1
            c[group_field(attr, value, "err")] += failed
            if "positive" in e:
                c[group_field(attr, value, "dec")] += 1
                c[group_field(attr, value, "pos")] += e["positive"]
        for flag in e.get("flags", []):
            c[f"f|{flag}"] += 1
        if "latency_ms" in e:
            c["latn"] += 1
            c[f"lat|{histogram.bucket_of(e['latency_ms'])}"] += 1
    return {k: Counter({f: v for f, v in c.items() if v}) for k, c in expected.items()}


async def stored_counters(d: Deployment, model: str, version: str, resolution: str) -> Counter[str]:
    pattern = d.keys.bucket(model, version, resolution, 0)[:-1] + "*"
    total: Counter[str] = Counter()
    async for key in d.redis.scan_iter(match=pattern, count=1000):
        for field, value in (await d.redis.hgetall(key)).items():
            total[field.decode()] += int(value)
    return total


@pytest.fixture(scope="module")
async def produced(deployment: Deployment) -> list[dict[str, Any]]:
    events = make_events(time.time())
    topic = deployment.settings.topics.predictions
    half = N_EVENTS // 2
    sends = [
        await deployment.producer.send(topic, orjson.dumps(e), key=e["request_id"].encode())
        for e in events[:half]
    ]
    for start in range(half, N_EVENTS, 50):
        sends.append(await deployment.producer.send(topic, orjson.dumps(events[start : start + 50])))
    await asyncio.gather(*sends)
    await deployment.worker.wait_metric("aimon_events_ingested_total", N_EVENTS, topic=topic)
    return events


async def test_aggregates_equal_an_independent_count(
    deployment: Deployment, produced: list[dict[str, Any]]
) -> None:
    expected = expected_counters(produced)
    assert sum(c["n"] for c in expected.values()) == N_EVENTS
    for (model, version), counts in expected.items():
        assert await stored_counters(deployment, model, version, MINUTE) == counts, (model, version)
        assert await stored_counters(deployment, model, version, HOUR) == counts, (model, version)
    models = {m.decode() for m in await deployment.redis.smembers(deployment.keys.models())}
    assert models == {*MODELS, RECENT_MODEL}
    newest = max(e["ts"] for e in produced if e["model_id"] == "credit")
    assert float(
        await deployment.redis.hget(deployment.keys.meta("credit"), "last_event_s")
    ) == pytest.approx(newest)


async def test_metrics_show_the_produced_numbers(
    deployment: Deployment, produced: list[dict[str, Any]]
) -> None:
    topic = deployment.settings.topics.predictions
    worker = deployment.worker
    assert await worker.metric("aimon_events_ingested_total", topic=topic) == N_EVENTS
    assert (
        await worker.metric("aimon_messages_consumed_total", topic=topic)
        == N_EVENTS // 2 + N_EVENTS // 50 // 2
    )
    recent = [e for e in produced if e["model_id"] == RECENT_MODEL]
    # set by the evaluator's next tick, from the windows the rules read
    gauge = await worker.wait_metric(
        "aimon_model_predictions", len(recent), model_id=RECENT_MODEL, version="3", window="5m"
    )
    assert gauge == len(recent)
    for (model, version), counts in expected_counters(
        produced
    ).items():  # the counters cover every event ever
        assert (
            await worker.metric("aimon_model_predictions_total", model_id=model, version=version)
            == counts["n"]
        )
        assert (
            await worker.metric("aimon_model_errors_total", model_id=model, version=version) == counts["err"]
        )
        assert (
            await worker.metric("aimon_model_latency_seconds_count", model_id=model, version=version)
            == counts["latn"]
        )
    errors = sum(bool(e.get("error")) for e in recent)
    ratio = await worker.metric("aimon_model_error_ratio", model_id=RECENT_MODEL, version="3", window="5m")
    assert ratio == pytest.approx(errors / len(recent))
    assert await worker.metric("aimon_ready") == 1.0


def bad_values(now: float) -> list[tuple[bytes, str, int]]:
    """(value, expected reason, how many dead letters it makes) — 50 bad events in all."""
    good = {"model_id": "mixed", "model_version": "1", "request_id": "ok", "ts": now}
    bad_model = {**good, "model_id": "never-aggregated"}
    values: list[tuple[bytes, str, int]] = []
    values += [(b"{oops" + bytes([i]), "invalid_json", 1) for i in range(8)]
    values += [(b"", "empty", 1) for _ in range(4)]
    values += [
        (orjson.dumps({k: v for k, v in bad_model.items() if k != "model_id"}), "invalid_event", 1)
        for _ in range(6)
    ]
    values += [(orjson.dumps({**bad_model, "confidence": "high"}), "invalid_event", 1) for _ in range(6)]
    values += [(orjson.dumps({**bad_model, "ts": "last tuesday"}), "invalid_event", 1) for _ in range(6)]
    values += [(orjson.dumps({**bad_model, "latency_ms": -3}), "invalid_event", 1) for _ in range(6)]
    values += [(orjson.dumps({**bad_model, "ts": now - 365 * 86400}), "out_of_window", 1) for _ in range(2)]
    values += [(orjson.dumps({**bad_model, "ts": now + 2 * 86400}), "out_of_window", 1) for _ in range(2)]
    values += [(orjson.dumps({**bad_model, "pad": "x" * 2_000_000}), "too_large", 1) for _ in range(2)]
    # arrays: 9 good elements and 1 bad one each; the bad element is dead-lettered alone
    for i in range(8):
        array = [{**good, "request_id": f"mixed-{i}-{j}"} for j in range(10)]
        array[i] = {**bad_model, "positive": "maybe"}
        values.append((orjson.dumps(array), "invalid_event", 1))
    assert sum(n for _, _, n in values) == 50
    return values


async def test_bad_values_are_dead_lettered_and_the_worker_keeps_going(deployment: Deployment) -> None:
    s = deployment.settings
    now = time.time()
    values = bad_values(now)
    sends = [
        await deployment.producer.send(s.topics.predictions, value, key=b"bad") for value, _, _ in values
    ]
    await asyncio.gather(*sends)
    letters = await read_topic(s.kafka_bootstrap, s.topics.dead_letters, 50)
    reasons = Counter(dict(m.headers)["reason"].decode() for m in letters)
    wanted: Counter[str] = Counter()
    for _, reason, n in values:
        wanted[reason] += n
    assert reasons == wanted
    for message in letters:
        headers = dict(message.headers)
        assert headers["source-topic"].decode() == s.topics.predictions
        assert int(headers["source-offset"]) >= 0
        assert headers["error"].decode().startswith(headers["reason"].decode())
    too_large = [m for m in letters if dict(m.headers)["reason"] == b"too_large"]
    assert all(len(m.value) > 2_000_000 for m in too_large)  # the original bytes are kept
    mixed = [m for m in letters if "source-index" in dict(m.headers)]
    assert sorted(int(dict(m.headers)["source-index"]) for m in mixed) == list(range(8))
    assert all(orjson.loads(m.value)["positive"] == "maybe" for m in mixed)

    # the good elements of the mixed arrays are counted; nothing of the bad events is
    await deployment.worker.wait_metric(
        "aimon_events_ingested_total", N_EVENTS + 72, topic=s.topics.predictions
    )
    mixed_counts = await stored_counters(deployment, "mixed", "1", MINUTE)
    assert mixed_counts["n"] == 72
    assert not await deployment.redis.exists(deployment.keys.meta("never-aggregated"))

    # still consuming afterwards
    await deployment.producer.send_and_wait(
        s.topics.predictions, orjson.dumps({**good_event(now), "request_id": "after"})
    )
    await deployment.worker.wait_metric(
        "aimon_events_ingested_total", N_EVENTS + 73, topic=s.topics.predictions
    )


def good_event(now: float) -> dict[str, Any]:
    return {"model_id": "mixed", "model_version": "1", "request_id": "x", "ts": now}


async def read_topic(bootstrap: str, topic: str, count: int, timeout_s: float = 30.0) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    messages: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(messages) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                messages.extend(records)
    finally:
        await consumer.stop()
    assert len(messages) == count, f"{len(messages)} messages on {topic}, wanted {count}"
    return messages


async def test_rewound_consumer_group_changes_nothing(
    deployment: Deployment, produced: list[dict[str, Any]]
) -> None:
    s = deployment.settings
    expected = expected_counters(produced)
    before = {key: await stored_counters(deployment, *key, MINUTE) for key in expected}
    deployment.worker.stop()

    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.kafka_bootstrap, group_id=s.app_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(s.topics.predictions, p) for p in range(s.partitions)]
        consumer.assign(partitions)
        await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in partitions})
    finally:
        await consumer.stop()

    deployment.worker.start()
    await deployment.worker.wait_ready()
    # every event of the first run comes again and is recognised as already applied
    await deployment.worker.wait_metric(
        "aimon_events_replayed_total", N_EVENTS, topic=s.topics.predictions, timeout_s=90
    )
    assert await deployment.worker.metric("aimon_events_ingested_total", topic=s.topics.predictions) == 0
    after = {key: await stored_counters(deployment, *key, MINUTE) for key in expected}
    assert after == before
