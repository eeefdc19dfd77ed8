"""The gateway client and the prediction reporter against the real broker."""

from __future__ import annotations

import random
import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from monitor.clients.gateway import GatewayClient
from monitor.clients.reporter import PredictionReporter
from monitor.control import build_message
from monitor.events import ControlMessage, EventDecoder, PredictionEvent, encode
from monitor.exceptions import ServicesError
from monitor.topics import ensure_topics
from tests.conftest import eventually, unique_settings

pytestmark = pytest.mark.integration


def control(model_id: str, seq: int, level: int, *, revoke: tuple[str, ...] = ()) -> ControlMessage:
    return build_message(
        model_id,
        seq,
        level,
        [],
        override=level,
        rollback_to=None,
        revoke_principals=revoke,
        issued_at=time.time(),
    )


async def publish(bootstrap: str, topic: str, records: list[tuple[str, bytes | None]]) -> None:
    """Send (key, value) records in order and wait for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


async def test_gateways_route_by_the_latest_control_state_and_rebuild_it_after_a_restart(
    services: tuple[str, str],
) -> None:
    settings = unique_settings(*services)
    await ensure_topics(settings)
    bootstrap, topic = settings.kafka_bootstrap, settings.topics.control
    await publish(
        bootstrap,
        topic,
        [
            ("credit-scoring", encode(control("credit-scoring", 1, 1))),
            ("credit-scoring", encode(control("credit-scoring", 3, 4))),
            ("credit-scoring", encode(control("credit-scoring", 2, 0))),  # late and lower: ignored
            ("fraud", encode(control("fraud", 1, 2))),
            ("fraud", encode(control("fraud", 2, 3, revoke=("svc-leaked",)))),
            ("fraud", b"{this is not a control message"),  # skipped and logged
            ("retired", encode(control("retired", 1, 4))),
            ("retired", None),  # tombstone: the model's state is gone
        ],
    )

    async with GatewayClient(bootstrap, topic, rng=random.Random(1)) as gateway:
        await gateway.wait_caught_up(30)
        assert gateway.caught_up and gateway.skipped == 1
        credit = gateway.state("credit-scoring")
        assert credit is not None and (credit.seq, credit.level, credit.mode) == (3, 4, "paused")
        paused = gateway.route("credit-scoring", confidence=0.99)
        assert (paused.decision, paused.level, paused.seq) == ("human_review", 4, 3)
        assert "paused" in paused.reason
        assert gateway.route("fraud", confidence=0.99).decision == "human_review"  # level 3: every decision
        assert gateway.route("fraud", confidence=0.99, principal="svc-leaked").decision == "blocked"
        assert gateway.state("retired") is None
        assert gateway.route("retired", confidence=0.99).decision == "automatic"
        before_restart = gateway.models()

        # The background task keeps following the topic after catching up.
        await publish(bootstrap, topic, [("credit-scoring", encode(control("credit-scoring", 4, 2)))])

        async def lowered() -> bool:
            state = gateway.state("credit-scoring")
            return state is not None and state.seq == 4

        await eventually(lowered, 15)
        assert gateway.route("credit-scoring", confidence=0.5).decision == "human_review"
        assert gateway.route("credit-scoring", confidence=0.95).level == 2
        latest = gateway.models()

    assert set(before_restart) == {"credit-scoring", "fraud"}
    async with GatewayClient(bootstrap, topic) as restarted:  # reads the compacted topic from the beginning
        await restarted.wait_caught_up(30)
        assert restarted.models() == latest
        assert restarted.route("fraud", confidence=0.99, principal="svc-leaked").decision == "blocked"


async def test_a_missing_control_topic_is_an_error_and_is_not_auto_created(services: tuple[str, str]) -> None:
    missing = f"control-missing-{uuid.uuid4().hex[:10]}"
    with pytest.raises(ServicesError, match="does not exist"):
        await GatewayClient(services[0], missing).start()
    admin = AIOKafkaAdminClient(bootstrap_servers=services[0])
    await admin.start()
    try:
        assert missing not in await admin.list_topics()
    finally:
        await admin.close()


async def test_the_reporter_sends_batches_as_json_arrays(services: tuple[str, str]) -> None:
    settings = unique_settings(*services)
    await ensure_topics(settings)
    topic = settings.topics.predictions
    now = time.time()
    events: list[dict[str, object] | PredictionEvent] = []
    for i in range(1234):
        fields = {
            "model_id": "credit-scoring",
            "model_version": "2.0.1",
            "request_id": f"req-{i}",
            "ts": now + i * 0.001,
            "confidence": 0.5 + (i % 50) / 100,
            "positive": i % 3 != 0,
        }
        events.append(PredictionEvent(**fields) if i % 2 else fields)  # type: ignore[arg-type]

    reporter = PredictionReporter(settings.kafka_bootstrap, topic, max_batch=100)
    await reporter.start()
    for item in events:
        await reporter.report(item)
    await reporter.stop()
    assert (reporter.sent_events, reporter.sent_messages) == (1234, 13)

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        messages: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 30
        while len(messages) < 13 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                messages.extend((record.key, record.value) for record in records)
    finally:
        await consumer.stop()

    assert sum(ends.values()) == 13 and len(messages) == 13  # exactly 13 messages on the topic
    decoder = EventDecoder(PredictionEvent, settings.max_value_bytes)
    seen: list[str] = []
    for key, value in messages:
        array = orjson.loads(value)
        assert isinstance(array, list) and 1 <= len(array) <= 100
        assert key == array[0]["request_id"].encode()
        decoded, rejected = decoder.decode(value)
        assert not rejected and len(decoded) == len(array)  # the monitor accepts every event
        seen.extend(e.request_id for e in decoded)
    assert sorted(seen) == sorted(f"req-{i}" for i in range(1234))
