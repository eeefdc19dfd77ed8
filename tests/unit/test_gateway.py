"""The gateway-side library without Kafka: routing at every level, seq ordering, decoding, and the
reporter's batching."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError

from monitor.clients import reporter as reporter_module
from monitor.clients.gateway import GatewayClient, Route, decide
from monitor.clients.reporter import PredictionReporter
from monitor.control import LEVELS, build_message
from monitor.events import ControlMessage, EventDecoder, PredictionEvent, encode

MODEL = "credit-scoring"


def control(
    level: int,
    seq: int = 1,
    *,
    revoke: tuple[str, ...] = (),
    rollback_to: str | None = None,
    model_id: str = MODEL,
) -> ControlMessage:
    """The control message the monitor publishes for `level` (the real ladder in monitor.control)."""
    return build_message(
        model_id,
        seq,
        level,
        [],
        override=level,
        rollback_to=rollback_to,
        revoke_principals=revoke,
        issued_at=1_760_000_000.0,
    )


class Draw(random.Random):
    """A random source whose every draw is `value`, so one table row pins one sampling outcome."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return self.value


NEVER = 0.999  # a draw above every sampling rate below 1
ALWAYS = 0.0  # a draw below every sampling rate above 0


@pytest.mark.parametrize(
    ("level", "confidence", "principal", "draw", "decision", "reason"),
    [
        (None, 0.5, None, ALWAYS, "automatic", "no control message"),
        (0, 0.95, None, NEVER, "automatic", "automatic"),
        (0, 0.95, None, 0.019, "human_review", "sampled for human review at 2%"),
        (0, 0.95, None, 0.021, "automatic", "automatic"),
        (0, None, None, NEVER, "automatic", "automatic"),
        (1, 0.95, None, 0.149, "human_review", "sampled for human review at 15%"),
        (1, 0.95, None, 0.151, "automatic", "automatic"),
        (1, 0.10, None, NEVER, "automatic", "automatic"),  # level 1 has no confidence floor
        (2, 0.79, None, NEVER, "human_review", "confidence 0.790 below the required 0.80"),
        (2, None, None, NEVER, "human_review", "no confidence reported, 0.80 required"),
        (2, math.nan, None, NEVER, "human_review", "below the required 0.80"),
        (2, 0.80, None, NEVER, "automatic", "automatic"),  # at the floor is not below it
        (2, 0.95, None, 0.149, "human_review", "sampled for human review at 15%"),
        (3, 0.99, None, NEVER, "human_review", "every decision reviewed"),
        (3, None, None, NEVER, "human_review", "every decision reviewed"),
        (4, 0.99, None, NEVER, "human_review", "model paused: AI disabled"),
        (4, None, "alice", NEVER, "human_review", "model paused"),
        (0, 0.95, "svc-leaked", NEVER, "blocked", "principal 'svc-leaked' is revoked"),
        (0, 0.95, "svc-other", NEVER, "automatic", "automatic"),
        (4, 0.95, "svc-leaked", NEVER, "blocked", "revoked"),  # revocation wins over pause
        (2, None, "svc-leaked", NEVER, "blocked", "revoked"),
    ],
)
def test_routing_table(
    level: int | None,
    confidence: float | None,
    principal: str | None,
    draw: float,
    decision: str,
    reason: str,
) -> None:
    message = None if level is None else control(level, seq=7, revoke=("svc-leaked",), rollback_to="3.0.2")
    route = decide(message, confidence, principal, Draw(draw))
    assert route.decision == decision
    assert reason in route.reason
    assert route.level == (level or 0)
    assert route.seq == (None if level is None else 7)
    assert route.rollback_to == (None if level is None else "3.0.2")


def test_every_level_of_the_ladder_is_routed_by_its_mode() -> None:
    assert {level: policy.mode for level, policy in LEVELS.items()} == {
        0: "auto",
        1: "auto",
        2: "human_review",
        3: "human_review",
        4: "paused",
    }
    reason = decide(control(3), 0.99, None, Draw(NEVER)).reason
    assert reason.endswith("(level 3, seq 1)")


def test_decisions_that_need_no_sample_do_not_draw() -> None:
    rng = Draw(NEVER)
    for level, confidence in ((2, 0.5), (3, 0.99), (4, 0.99)):
        decide(control(level), confidence, None, rng)
    decide(control(0, revoke=("p",)), 0.99, "p", rng)
    decide(None, 0.99, None, rng)
    assert rng.draws == 0


def test_route_is_a_frozen_value() -> None:
    route = Route("automatic", "automatic", 0, None, None)
    with pytest.raises(AttributeError):
        route.decision = "blocked"  # type: ignore[misc]


def client(seed: int = 0) -> GatewayClient:
    return GatewayClient("127.0.0.1:1", "control", rng=random.Random(seed))  # never connects


def test_a_lower_seq_is_ignored_and_an_equal_seq_keeps_the_held_message() -> None:
    gateway = client()
    assert gateway._apply(control(2, seq=5))
    assert not gateway._apply(control(0, seq=3))
    assert gateway.state(MODEL) == control(2, seq=5)
    assert not gateway._apply(control(4, seq=5))
    assert gateway.state(MODEL) == control(2, seq=5)
    assert gateway._apply(control(1, seq=6))
    assert gateway.route(MODEL, confidence=0.5).level == 1


def test_models_are_independent() -> None:
    gateway = client()
    gateway._apply(control(4, seq=9, model_id="a"))
    gateway._apply(control(0, seq=1, model_id="b"))
    assert gateway.route("a", confidence=0.99).decision == "human_review"
    assert gateway.route("b", confidence=0.99, principal=None).level == 0
    assert gateway.route("unknown", confidence=None) == Route(
        "automatic", "no control message for this model", 0, None, None
    )
    assert set(gateway.models()) == {"a", "b"}


def test_records_decode_and_tombstones_remove_and_bad_values_are_skipped() -> None:
    gateway = client()
    gateway._on_record(MODEL.encode(), encode(control(3, seq=2)), "control/0@0")
    assert gateway.state(MODEL) == control(3, seq=2)
    bad_level = orjson.loads(encode(control(3, seq=9)))
    bad_level["level"] = 9
    for value in (b"{not json", b"", orjson.dumps({"model_id": MODEL, "seq": 10}), orjson.dumps(bad_level)):
        gateway._on_record(MODEL.encode(), value, "control/0@1")
    assert gateway.skipped == 4
    assert gateway.state(MODEL) == control(3, seq=2)  # nothing bad replaced the good state
    gateway._on_record(MODEL.encode(), None, "control/0@2")
    assert gateway.state(MODEL) is None
    assert gateway.route(MODEL, confidence=0.99).decision == "automatic"
    gateway._on_record(None, None, "control/0@3")
    assert gateway.skipped == 5


def test_a_revoked_principal_is_blocked_only_while_the_revocation_holds() -> None:
    gateway = client()
    gateway._apply(control(2, seq=1, revoke=("svc-exfil",)))
    assert gateway.route(MODEL, confidence=0.99, principal="svc-exfil").decision == "blocked"
    assert gateway.route(MODEL, confidence=0.99, principal="svc-ok").decision != "blocked"
    gateway._apply(control(2, seq=2))
    assert gateway.route(MODEL, confidence=0.99, principal="svc-exfil").decision != "blocked"


@pytest.mark.parametrize(("level", "rate"), [(0, 0.02), (1, 0.15), (2, 0.15)])
def test_sampling_share_matches_the_rate(level: int, rate: float) -> None:
    gateway = client(seed=20240601)
    gateway._apply(control(level))
    routes = [gateway.route(MODEL, confidence=0.95) for _ in range(10_000)]
    share = sum(r.decision == "human_review" for r in routes) / len(routes)
    assert abs(share - rate) < 0.01
    assert {r.decision for r in routes} == {"automatic", "human_review"}


def test_a_seeded_gateway_is_reproducible() -> None:
    first, second = client(seed=3), client(seed=3)
    for gateway in (first, second):
        gateway._apply(control(1))
    assert [first.route(MODEL, confidence=0.9).decision for _ in range(500)] == [
        second.route(MODEL, confidence=0.9).decision for _ in range(500)
    ]


# The reporter, on a producer that records what it is asked to send.


class FakeProducer:
    """Stands in for AIOKafkaProducer; `gate` holds sends back, `failures` fail the next sends."""

    made: list[FakeProducer] = []

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.failures = 0
        self.stopped = False
        FakeProducer.made.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("broker away")
        self.sent.append((topic, value, key))

    def arrays(self) -> list[list[dict[str, Any]]]:
        return [orjson.loads(value) for _, value, _ in self.sent]


@pytest.fixture
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeProducer]]:
    FakeProducer.made = []
    monkeypatch.setattr(reporter_module, "AIOKafkaProducer", FakeProducer)
    yield FakeProducer


def event(i: int) -> dict[str, Any]:
    return {
        "model_id": MODEL,
        "model_version": "1.0",
        "request_id": f"r{i}",
        "ts": 1_760_000_000.0 + i,
        "confidence": 0.9,
        "positive": i % 2 == 0,
    }


async def test_a_full_batch_goes_at_once_and_the_rest_after_the_linger(
    fake_producer: type[FakeProducer],
) -> None:
    reporter = PredictionReporter("fake:9092", "predictions", max_batch=10, linger_s=0.3)
    await reporter.start()
    producer = fake_producer.made[0]
    for i in range(13):
        await reporter.report(event(i))
    reported = time.monotonic()
    await asyncio.sleep(0.05)
    assert [len(a) for a in producer.arrays()] == [10]  # full: sent without waiting for the linger

    async def rest_sent() -> None:
        while len(producer.sent) < 2:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(rest_sent(), 5)
    assert time.monotonic() - reported >= 0.29  # the rest went once it had lingered
    assert [len(a) for a in producer.arrays()] == [10, 3]
    assert [key for _, _, key in producer.sent] == [b"r0", b"r10"]
    assert (reporter.sent_events, reporter.sent_messages, reporter.buffered) == (13, 2, 0)
    await reporter.stop()
    assert producer.stopped


async def test_flush_and_stop_send_without_lingering(fake_producer: type[FakeProducer]) -> None:
    reporter = PredictionReporter("fake:9092", "predictions", max_batch=100, linger_s=60)
    await reporter.start()
    producer = fake_producer.made[0]
    await reporter.report(event(0))
    await reporter.report(
        PredictionEvent(model_id=MODEL, model_version="1.0", request_id="r1", ts=1_760_000_001.0)
    )
    await asyncio.wait_for(reporter.flush(), 1)
    assert [len(a) for a in producer.arrays()] == [2]
    decoded, rejected = EventDecoder(PredictionEvent, 1_048_576).decode(producer.sent[0][1])
    assert [e.request_id for e in decoded] == ["r0", "r1"] and not rejected
    await reporter.report(event(2))
    await asyncio.wait_for(reporter.stop(), 1)
    assert [len(a) for a in producer.arrays()] == [2, 1]
    with pytest.raises(RuntimeError):
        await reporter.report(event(3))


async def test_a_full_buffer_makes_report_wait_instead_of_dropping(fake_producer: type[FakeProducer]) -> None:
    reporter = PredictionReporter("fake:9092", "predictions", max_batch=10, linger_s=0.01, max_buffer=20)
    await reporter.start()
    producer = fake_producer.made[0]
    producer.gate.clear()  # the broker does not acknowledge

    async def report_all() -> None:
        for i in range(40):
            await reporter.report(event(i))

    reporting = asyncio.create_task(report_all())
    await asyncio.sleep(0.1)
    assert not reporting.done()
    assert reporter.buffered == 30  # 10 in flight + a full buffer of 20; the reporter waits
    producer.gate.set()
    await asyncio.wait_for(reporting, 1)
    await reporter.stop()
    sent = [e["request_id"] for array in producer.arrays() for e in array]
    assert sent == [f"r{i}" for i in range(40)]
    assert (reporter.sent_events, reporter.sent_messages) == (40, 4)


async def test_batches_are_cut_by_size_and_an_oversized_event_is_refused(
    fake_producer: type[FakeProducer],
) -> None:
    one = len(orjson.dumps(event(0)))
    reporter = PredictionReporter(
        "fake:9092", "predictions", max_batch=100, linger_s=60, max_batch_bytes=3 * one + 10
    )
    await reporter.start()
    for i in range(7):
        await reporter.report(event(i))
    with pytest.raises(ValueError, match="max_batch_bytes"):
        await reporter.report({**event(99), "groups": {"pad": "x" * 4 * one}})
    await reporter.stop()
    producer = fake_producer.made[0]
    assert [len(a) for a in producer.arrays()] == [3, 3, 1]
    assert all(len(value) <= reporter.max_batch_bytes for _, value, _ in producer.sent)


async def test_broker_errors_are_retried_and_nothing_is_lost(fake_producer: type[FakeProducer]) -> None:
    reporter = PredictionReporter("fake:9092", "predictions", max_batch=5, linger_s=0.01)
    await reporter.start()
    producer = fake_producer.made[0]
    producer.failures = 2
    for i in range(5):
        await reporter.report(event(i))
    await asyncio.wait_for(reporter.flush(), 5)
    assert [len(a) for a in producer.arrays()] == [5]
    assert (reporter.sent_events, reporter.sent_messages) == (5, 1)
    await reporter.stop()


async def test_an_event_that_cannot_be_encoded_fails_only_its_own_report(
    fake_producer: type[FakeProducer],
) -> None:
    reporter = PredictionReporter("fake:9092", "predictions", max_batch=5, linger_s=0.01)
    await reporter.start()
    await reporter.report(event(0))
    with pytest.raises(TypeError):
        await reporter.report({**event(1), "prediction": object()})
    await reporter.stop()
    assert [len(a) for a in fake_producer.made[0].arrays()] == [1]
