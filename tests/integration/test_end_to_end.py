"""From predictions on Kafka to a control message on Kafka, through a real `monitor run` worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from monitor.settings import Settings
from monitor.topics import ensure_topics
from tests.conftest import WorkerProcess, unique_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def running(services: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Settings, WorkerProcess]]:
    settings = unique_settings(*services)
    await ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path_factory.mktemp("e2e") / "worker.log")
    worker.start()
    try:
        await worker.wait_ready()
        yield settings, worker
    finally:
        worker.stop()


async def first_message(bootstrap: str, topic: str, timeout_s: float) -> tuple[bytes, dict[str, object], float]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    return record.key, orjson.loads(record.value), time.time()
        raise AssertionError(f"nothing on {topic} within {timeout_s}s")
    finally:
        await consumer.stop()


async def test_an_error_burst_pauses_the_model_within_seconds(running: tuple[Settings, WorkerProcess]) -> None:
    settings, worker = running
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    now = time.time()
    events = [
        {"model_id": "loan-approval", "model_version": "3.1.0", "request_id": f"r{i}", "ts": now - 30 + i * 0.03,
         "latency_ms": 35.0, "positive": i % 3 != 0, **({"error": "upstream_timeout"} if i % 10 < 3 else {})}
        for i in range(1000)
    ]
    try:
        for start in range(0, len(events), 100):
            await producer.send_and_wait(settings.topics.predictions, orjson.dumps(events[start : start + 100]))
        sent = time.time()
    finally:
        await producer.stop()

    key, control, seen = await first_message(settings.kafka_bootstrap, settings.topics.control, 30)
    assert key == b"loan-approval"
    assert control["level"] == 4 and control["mode"] == "paused" and control["seq"] == 1
    assert "error-rate CRITICAL" in str(control["reason"])
    assert seen - sent < 10, "detection took too long"
    _, incident, _ = await first_message(settings.kafka_bootstrap, settings.topics.incidents, 10)
    assert incident["event"] == "opened" and incident["rule"] == "error-rate"
    assert incident["id"] in control["incident_ids"]  # type: ignore[operator]
    observation = incident["observation"]
    assert isinstance(observation, dict) and observation["samples"] == 1000 and observation["value"] == pytest.approx(0.3)
    assert await worker.metric("aimon_escalation_level", model_id="loan-approval") == 4
    assert await worker.metric("aimon_incidents_open", category="availability", severity="CRITICAL") == 1
    print("\ncontrol message:", orjson.dumps(control, option=orjson.OPT_INDENT_2).decode())
    print("incident:", orjson.dumps({k: incident[k] for k in ("event", "id", "rule", "severity", "status", "observation")}, option=orjson.OPT_INDENT_2).decode())
    await asyncio.sleep(0)
