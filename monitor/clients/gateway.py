"""The gateway client (docs/gateways.md): the latest control message per model, a route per request.

A routing gateway in front of a model keeps one `GatewayClient`. It reads the compacted `control`
topic from the beginning without a consumer group, so every gateway sees every model and a restarted
gateway rebuilds the latest state; a background task then keeps following the topic. `route` is a
plain dictionary lookup plus `decide`, cheap enough to call on every request.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError

from monitor.clients.security import PLAINTEXT, KafkaSecurity
from monitor.events import ControlMessage
from monitor.exceptions import ServicesError
from monitor.retry import retry

log = logging.getLogger(__name__)

Decision = Literal["automatic", "human_review", "blocked"]

_RETRY_MIN_S = 0.1
_RETRY_MAX_S = 5.0
_Records = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


@dataclass(frozen=True, slots=True)
class Route:
    """How one request is routed, and why."""

    decision: Decision
    reason: str
    level: int
    seq: int | None
    rollback_to: str | None


def decide(
    message: ControlMessage | None,
    confidence: float | None,
    principal: str | None,
    rng: random.Random,
) -> Route:
    """The route of one request under a model's latest control message (pure; `rng` draws the samples)."""
    if message is None:
        return Route("automatic", "no control message for this model", 0, None, None)

    def route(decision: Decision, reason: str) -> Route:
        return Route(
            decision,
            f"{reason} (level {message.level}, seq {message.seq})",
            message.level,
            message.seq,
            message.rollback_to,
        )

    # A revoked principal is refused whatever the mode: revocation contains a security incident.
    if principal is not None and principal in message.revoke_principals:
        return route("blocked", f"principal {principal!r} is revoked")
    if message.mode == "paused":
        return route("human_review", "model paused: AI disabled, a person decides")
    if message.mode == "human_review":
        floor = message.review_below_confidence
        if floor is None:
            return route("human_review", "every decision reviewed: the AI only recommends")
        if confidence is None:
            return route("human_review", f"no confidence reported, {floor:.2f} required")
        # `not >=` also sends NaN to a person: a confidence that cannot be compared earns no trust.
        if not confidence >= floor:
            return route("human_review", f"confidence {confidence:.3f} below the required {floor:.2f}")
    # Draw only here, so deterministic decisions do not consume the seeded sequence.
    if rng.random() < message.review_sampling_rate:
        return route("human_review", f"sampled for human review at {message.review_sampling_rate * 100:g}%")
    return route("automatic", "automatic")


class GatewayClient:
    """Follows the control topic and answers "how should this request be routed?"."""

    def __init__(
        self,
        bootstrap: str,
        control_topic: str,
        *,
        rng: random.Random | None = None,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.bootstrap = bootstrap
        self.security = security  # TLS / SASL to the brokers (monitor.clients.security)
        self.control_topic = control_topic
        self.rng = rng if rng is not None else random.Random()
        self.skipped = 0  # values that did not decode (logged, never applied)
        self._states: dict[str, ControlMessage] = {}
        self._decoder = msgspec.json.Decoder(ControlMessage)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._targets: dict[TopicPartition, int] = {}
        self._caught_up = asyncio.Event()

    async def __aenter__(self) -> GatewayClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Assign every partition of the control topic from the beginning and start following it."""
        if self._task is not None:
            raise RuntimeError("GatewayClient is already started")
        partitions = [TopicPartition(self.control_topic, p) for p in await self._partitions()]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self.security.client_options(),
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            # "Caught up" means: read everything that was on the topic when we started.
            self._targets = dict(await consumer.end_offsets(partitions))
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._caught_up.clear()
        self._task = asyncio.create_task(self._follow(consumer), name=f"gateway:{self.control_topic}")

    async def stop(self) -> None:
        """Stop following the topic; the state read so far stays readable."""
        task, self._task = self._task, None
        consumer, self._consumer = self._consumer, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            if consumer is not None:
                await consumer.stop()

    async def wait_caught_up(self, timeout_s: float = 30) -> None:
        """Return once the client has read up to the end offsets observed at start."""
        if self._task is None:
            raise RuntimeError("GatewayClient.start() was not awaited")
        waiter = asyncio.ensure_future(self._caught_up.wait())
        try:
            await asyncio.wait({waiter, self._task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._caught_up.is_set():
            return
        if self._task.done():
            self._task.result()  # re-raise what stopped the follower
        raise TimeoutError(f"control topic {self.control_topic!r} not read to its end within {timeout_s}s")

    @property
    def caught_up(self) -> bool:
        """True once the state includes everything on the topic at start."""
        return self._caught_up.is_set()

    def state(self, model_id: str) -> ControlMessage | None:
        """The latest control message of a model, or None if there is none."""
        return self._states.get(model_id)

    def models(self) -> dict[str, ControlMessage]:
        """A snapshot of the latest control message of every model."""
        return dict(self._states)

    def route(self, model_id: str, *, confidence: float | None, principal: str | None = None) -> Route:
        """How to route one request to `model_id` under its latest control message."""
        return decide(self._states.get(model_id), confidence, principal, self.rng)

    def _apply(self, message: ControlMessage) -> bool:
        """Keep `message` unless the held one has an equal or higher seq; True if it was kept."""
        held = self._states.get(message.model_id)
        if held is not None and message.seq <= held.seq:
            if message.seq < held.seq:
                log.info("control %s seq %d ignored: seq %d is held", message.model_id, message.seq, held.seq)
            return False
        self._states[message.model_id] = message
        if held is None or (held.level, held.mode) != (message.level, message.mode):
            log.info(
                "control %s -> level %d (%s), seq %d: %s",
                message.model_id,
                message.level,
                message.mode,
                message.seq,
                message.reason,
            )
        return True

    def _on_record(self, key: bytes | None, value: bytes | None, where: str) -> None:
        """Apply one record: a control message, a tombstone, or a value that is skipped and logged."""
        if value is None:
            if key is None:
                log.error("control tombstone without a key at %s skipped", where)
                self.skipped += 1
                return
            model_id = key.decode("utf-8", "replace")
            if self._states.pop(model_id, None) is not None:
                log.info("control %s removed by a tombstone at %s", model_id, where)
            return
        try:
            message = self._decoder.decode(value)
        except msgspec.DecodeError as exc:  # also a ValidationError
            self.skipped += 1
            log.error("control value at %s skipped, it does not decode: %s (%r)", where, exc, value[:200])
            return
        if key is not None and key != message.model_id.encode():
            # Compaction keeps the latest value per key, so a mismatched key is a publisher bug;
            # apply it anyway: ignoring it could hide an escalation.
            log.warning("control key %r differs from model_id %r at %s", key, message.model_id, where)
        self._apply(message)

    async def _partitions(self) -> list[int]:
        """The partition ids of the control topic; raises ServicesError if the topic is missing."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.security.client_options())
        try:
            await admin.start()
        except KafkaConnectionError as exc:
            raise ServicesError(f"Kafka at {self.bootstrap} does not answer ({exc})") from None
        try:
            # Ask for all topics: naming a missing topic would auto-create it on brokers with
            # auto.create.topics.enable, and an auto-created control topic is not compacted.
            topics = await admin.describe_topics()
        finally:
            await admin.close()
        for topic in topics:
            if topic["topic"] == self.control_topic and topic["error_code"] == 0:
                return sorted(p["partition"] for p in topic["partitions"])
        raise ServicesError(
            f"control topic {self.control_topic!r} does not exist on {self.bootstrap}; "
            "the monitor creates it at start (`monitor run`)"
        )

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        """Apply records as they arrive, forever; broker errors are retried with backoff."""

        def away(exc: BaseException, delay_s: float) -> None:
            # Keep serving the last known state while the broker is away; never die silently.
            log.warning(
                "control topic %s: %s; retrying in %.1fs",
                self.control_topic,
                exc,
                delay_s,
                exc_info=not isinstance(exc, KafkaError),
            )

        while True:
            # Each poll starts its backoff afresh: one success ends an outage.
            batches = await retry(
                lambda: self._poll(consumer),
                on=Exception,
                first_s=_RETRY_MIN_S,
                max_s=_RETRY_MAX_S,
                before_sleep=away,
            )
            for tp, records in batches.items():
                for record in records:
                    self._on_record(record.key, record.value, f"{tp.topic}/{tp.partition}@{record.offset}")

    async def _poll(self, consumer: AIOKafkaConsumer) -> _Records:
        """Note the end of the initial read once reached, then wait up to 500 ms for records."""
        if not self._caught_up.is_set() and await self._reached_targets(consumer):
            self._caught_up.set()
            log.info("control topic %s read to its end: %d models", self.control_topic, len(self._states))
        records: _Records = await consumer.getmany(timeout_ms=500)
        return records

    async def _reached_targets(self, consumer: AIOKafkaConsumer) -> bool:
        """True when every partition's position is at or past its end offset seen at start."""
        for tp, end in self._targets.items():
            if await consumer.position(tp) < end:
                return False
        return True
