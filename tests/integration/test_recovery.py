"""A Redis crash that loses its last writes, on the real services: the worker reads again from Kafka
what Redis no longer holds (the watermarks Redis keeps, not the group's committed offsets), so every
aggregate equals the independent count; incidents, levels, control seq and the audit chain survive.

`kill -9` of redis-server alone loses nothing with the append-only file (what Redis wrote is in the
page cache); a crash of its machine loses what was not fsynced yet. The test makes that loss real:
it kills Redis and cuts its append-only file back to the size it had two seconds before the kill.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from monitor.audit import AuditLog
from monitor.audit.anchor import read_anchor
from monitor.audit.secret import audit_secret
from monitor.dev.scratch_redis import ScratchRedis
from monitor.settings import Settings
from monitor.store.keys import Keys
from monitor.topic_reader import own_consumer, partitions, records
from monitor.topics import ensure_topics
from tests.conftest import WorkerProcess, eventually, free_port, unique_settings
from tests.integration.test_reliability import expected, produce_slowly, traffic, wait_for_total

pytestmark = pytest.mark.integration

LOOKBACK_S = 2.0  # how much of the append-only file the simulated machine crash takes with it


async def sample_sizes(path: Path, sizes: list[tuple[float, int]]) -> None:
    """The append-only file's size every 50 ms (what a machine crash at that moment would have kept)."""
    while True:
        sizes.append((time.monotonic(), path.stat().st_size))
        await asyncio.sleep(0.05)


async def open_an_incident(settings: Settings, redis: Redis, keys: Keys) -> str:
    """An error burst on `crash-err`: the worker opens an incident and pauses the model."""
    now = time.time()
    burst = [
        {
            "model_id": "crash-err",
            "model_version": "1",
            "request_id": f"e{i}",
            "ts": now - 20 + i * 0.02,
            "latency_ms": 30.0,
            **({"error": "upstream_timeout"} if i % 10 < 3 else {}),
        }
        for i in range(1000)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for start in range(0, len(burst), 100):
            await producer.send(
                settings.topics.predictions, orjson.dumps(burst[start : start + 100]), partition=0
            )
        await producer.flush()
    finally:
        await producer.stop()

    async def opened() -> bool:
        return bool(await redis.hlen(keys.open_incidents("crash-err")))

    await eventually(opened, timeout_s=30)
    (incident_id,) = [v.decode() for v in (await redis.hgetall(keys.open_incidents("crash-err"))).values()]
    return incident_id


async def acknowledge(worker: WorkerProcess, settings: Settings, incident_id: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{settings.web_url}/incidents/{incident_id}/acknowledge",
            json={"by": "sre", "why": "on it"},
            headers={"Authorization": "Bearer crash-token"},
        ) as response,
    ):
        assert response.status == 200, await response.text()


async def durable_state(redis: Redis, keys: Keys) -> dict[str, object]:
    control = await redis.hgetall(keys.control("crash-err"))
    return {
        "seq": control.get(b"seq"),
        "level": control.get(b"level"),
        "open": await redis.hgetall(keys.open_incidents("crash-err")),
        "audit": await redis.lrange(keys.audit(), 0, -1),
    }


@pytest.mark.parametrize("worker_dies_too", [False, True], ids=["worker-keeps-running", "worker-killed-too"])
async def test_a_redis_crash_that_loses_its_last_seconds_loses_no_event(
    services: tuple[str, str], tmp_path: Path, worker_dies_too: bool
) -> None:
    own = ScratchRedis(tmp_path)
    own.start()
    await own.wait_up()
    settings = unique_settings(
        services[0], own.url, redis_retry_max_s=1, kafka_session_timeout_s=6, api_token="crash-token"
    )
    keys = Keys(settings.key_prefix)
    await ensure_topics(settings)
    redis = Redis.from_url(own.url)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    sizes: list[tuple[float, int]] = []
    sampler: asyncio.Task[None] | None = None
    try:
        await worker.wait_ready()
        incident_id = await open_an_incident(settings, redis, keys)
        await acknowledge(worker, settings, incident_id)
        before = await durable_state(redis, keys)
        assert before["seq"] is not None and before["audit"]

        sampler = asyncio.create_task(sample_sizes(own.incremental_aof(), sizes))
        events = traffic(15_000, time.time())
        producing = asyncio.create_task(produce_slowly(settings, events, per_second=1500))
        await worker.wait_metric("aimon_events_ingested_total", 5000, topic=settings.topics.predictions)
        own.kill()
        if worker_dies_too:
            assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
        killed_at = time.monotonic()
        sampler.cancel()
        kept = max(size for at, size in sizes if at <= killed_at - LOOKBACK_S)
        aof = own.incremental_aof()
        lost_bytes = aof.stat().st_size - kept
        assert lost_bytes > 0, "nothing was written in the last seconds: the crash would lose nothing"
        os.truncate(aof, kept)  # the machine went down: what was not fsynced is gone
        own.start()
        await own.wait_up()
        await redis.aclose()
        redis = Redis.from_url(own.url)
        if worker_dies_too:
            worker = WorkerProcess(settings.model_copy(update={"web_port": free_port()}), tmp_path / "w2.log")
            worker.start()

        await producing
        counts = await wait_for_total(redis, keys, len(events), timeout_s=120)
        assert counts == expected(events)
        recovered = await worker.metric("aimon_events_recovered_total", topic=settings.topics.predictions)
        assert recovered > 0, "the crash lost nothing that had to be read again:\n" + worker.log_tail()
        assert "reading those" in worker.log_tail(2000)
        after = await durable_state(redis, keys)
        assert after == before, "incidents, levels, control seq or audit changed across the crash"
        secret = audit_secret(
            settings, create=False
        ).value  # the worker's (MONITOR_AUDIT_SECRET or its key file)
        anchor = await read_anchor(settings.kafka_bootstrap, settings.topics.audit)
        assert (await AuditLog(redis, keys, secret=secret).verify(anchor)).ok  # and against the audit topic
        print(
            f"\nRedis crash ({'worker killed too' if worker_dies_too else 'worker kept running'}): "
            f"{lost_bytes} bytes of the append-only file lost, {recovered:.0f} events read again "
            f"from Kafka, {sum(counts.values())} of {len(events)} counted exactly once"
        )
    finally:
        if sampler is not None:
            sampler.cancel()
        worker.stop()
        await redis.aclose()
        own.kill(signal.SIGTERM)


async def control_messages(settings: Settings) -> list[dict[str, object]]:
    """Every message on the control topic, read to the end offsets it has now."""
    consumer = own_consumer(settings.kafka_bootstrap)
    await consumer.start()
    try:
        tps = await partitions(consumer, settings.topics.control) or []
        found: list[dict[str, object]] = []
        async for chunk in records(consumer, dict.fromkeys(tps), timeout_s=30):
            found.extend(orjson.loads(r.value) for r in chunk)
        return found
    finally:
        await consumer.stop()


async def test_control_seq_never_goes_back_when_redis_loses_the_write(
    services: tuple[str, str], tmp_path: Path
) -> None:
    """Redis loses the control message it staged (and the incident, its acknowledgement's audit
    entry, and the burst's counts): the evaluator takes the seq from the control topic and the audit
    entry from the audit topic, and the burst, read again, changes nothing."""
    own = ScratchRedis(tmp_path)
    own.start()
    await own.wait_up()
    settings = unique_settings(services[0], own.url, redis_retry_max_s=1, api_token="crash-token")
    keys = Keys(settings.key_prefix)
    await ensure_topics(settings)
    redis = Redis.from_url(own.url)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        await worker.wait_ready()
        healthy = traffic(300, time.time())
        await producer.send_and_wait(settings.topics.predictions, orjson.dumps(healthy), partition=0)
        await wait_for_total(redis, keys, len(healthy))
        await asyncio.sleep(1.5)  # fsynced: what a crash keeps
        kept = own.incremental_aof().stat().st_size
        incident_id = await open_an_incident(settings, redis, keys)

        async def published() -> bool:
            return await redis.hget(keys.control("crash-err"), "last") is not None

        await eventually(published, timeout_s=20)
        assert [m["seq"] for m in await control_messages(settings)] == [1]
        await acknowledge(worker, settings, incident_id)
        audit_before = await redis.lrange(keys.audit(), 0, -1)
        assert len(audit_before) == 1
        own.kill()
        # The crash takes the burst, the incident, seq 1 and the acknowledgement's audit entry.
        os.truncate(own.incremental_aof(), kept)
        own.start()
        await own.wait_up()
        await redis.aclose()
        redis = Redis.from_url(own.url)
        assert await redis.hget(keys.control("crash-err"), "seq") is None
        # The partition's next batch finds the gap and reads the burst again.
        await producer.send_and_wait(
            settings.topics.predictions, orjson.dumps(traffic(10, time.time())), partition=0
        )

        async def reconciled() -> bool:
            seq = await redis.hget(keys.control("crash-err"), "seq")
            return seq is not None and "taking the topic's" in worker.log_tail(500)

        await eventually(reconciled, timeout_s=30)
        await eventually(lambda: redis.hlen(keys.open_incidents("crash-err")), timeout_s=30)
        await asyncio.sleep(3)  # a message reusing seq 1 would be out by now
        seqs = [m["seq"] for m in await control_messages(settings)]
        assert len(seqs) == len(set(seqs)), f"a control seq was used twice: {seqs}"
        state = await redis.hgetall(keys.control("crash-err"))
        assert int(state[b"seq"]) == max(seqs) and int(state[b"level"]) == 4
        assert await redis.lrange(keys.audit(), 0, -1) == audit_before  # put back, byte for byte
        assert "1 entry missing at the end of the Redis list" in worker.log_tail(500)
        print(f"\ncontrol seqs on the topic across the crash: {seqs}; Redis took seq {int(state[b'seq'])}")
    finally:
        await producer.stop()
        worker.stop()
        await redis.aclose()
        own.kill(signal.SIGTERM)
