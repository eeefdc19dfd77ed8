"""Batch ingest: decode a batch of messages, dead-letter what is bad, apply the rest in one write.

This is the whole of an agent's work, kept free of Faust so it reads (and tests) as plain code:
the Faust agent only turns its `take_events` batches into `RawMessage`s and calls `handle`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import msgspec

from monitor.aggregates.predictions import Located
from monitor.events import E, EventDecoder, Rejected
from monitor.metrics import IngestMetrics
from monitor.retry import retry
from monitor.store.redis import TRANSIENT, ApplyResult

if TYPE_CHECKING:
    from monitor.agents.recovery import Recovery

log = logging.getLogger(__name__)

REASON_OUT_OF_WINDOW = "out_of_window"
# Producers' clocks drift; an event further ahead than this would create buckets nobody reads.
MAX_FUTURE_SKEW_S = 3600.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A consumed Kafka message, as much of it as ingest needs."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None  # Kafka record timestamp, epoch seconds (the catch-up hold)


class DeadLetterSink(Protocol):
    """Where rejected values go; `send` returns once they are durably written."""

    async def send(self, rejects: Sequence[tuple[RawMessage, Rejected]]) -> None:
        """Publish each reject with its reason and source position."""


ApplyFn = Callable[[str, Sequence[Located]], Awaitable[ApplyResult]]


class BatchIngestor(Generic[E]):
    """Turns batches of one topic's messages into aggregate writes and dead letters."""

    def __init__(
        self,
        topic: str,
        decoder: EventDecoder[E],
        apply: ApplyFn,
        dead_letters: DeadLetterSink,
        metrics: IngestMetrics,
        *,
        retention_s: float,
        retry_max_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_redis_down: Callable[[bool], None] = lambda down: None,
        topic_kind: str = "",
        recovery: Recovery | None = None,
    ) -> None:
        self.topic = topic
        self.decoder = decoder
        self._apply = apply
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.retention_s = retention_s
        self.retry_max_s = retry_max_s
        self.clock = clock
        self.on_redis_down = on_redis_down
        self.topic_kind = topic_kind
        self.recovery = recovery
        # The topic's counters exist from the start at 0, on every worker, whether or not it has
        # been assigned a partition yet: rate() and increase() then see the first message.
        for counter in (metrics.messages, metrics.events, metrics.replayed, metrics.recovered):
            counter.labels(topic)

    async def handle(self, messages: Sequence[RawMessage]) -> ApplyResult:
        """Process one batch; returns only when every event is applied or dead-lettered."""
        located, rejects = self.split(messages)
        self.metrics.messages.labels(self.topic).inc(len(messages))
        if rejects:
            await self.dead_letters.send(rejects)
            for _, rejected in rejects:
                self.metrics.dead_letters.labels(self.topic, rejected.reason).inc()
        started = time.perf_counter()
        recovery = self.recovery
        if recovery is not None:  # what Redis lost of the offsets before this batch goes in first
            await self._until_done(lambda: recovery.close_gaps(messages, self._reapply), "close a gap")
        result = await self._apply_until_done(located)
        if recovery is not None:
            await self._until_done(lambda: recovery.applied(messages), "record a batch as applied")
        self.metrics.batch_seconds.labels(self.topic).observe(time.perf_counter() - started)
        self.metrics.events.labels(self.topic).inc(result.applied_events)
        self.metrics.replayed.labels(self.topic).inc(result.skipped_events)
        for name, count in result.details.items():
            self.metrics.details.labels(self.topic, name).inc(count)
        if self.topic_kind == "access":
            denied = sum(1 for item in located if getattr(item.event, "outcome", None) == "denied")
            self.metrics.access_denied.inc(denied)
        return result

    def split(
        self, messages: Sequence[RawMessage]
    ) -> tuple[list[Located], list[tuple[RawMessage, Rejected]]]:
        """Decode every message into located events and rejects (pure)."""
        now = self.clock()
        oldest, newest = now - self.retention_s, now + MAX_FUTURE_SKEW_S
        located: list[Located] = []
        rejects: list[tuple[RawMessage, Rejected]] = []
        for message in messages:
            events, bad = self.decoder.decode(message.value)
            rejects.extend((message, rejected) for rejected in bad)
            for event in events:
                if oldest <= event.epoch_s <= newest:
                    located.append(Located(event, message.partition, message.offset))
                else:
                    rejects.append((message, _out_of_window(event, message, oldest, newest)))
        return located, rejects

    async def _reapply(self, messages: list[RawMessage]) -> None:
        """Apply messages read again from Kafka after Redis lost them (their dead letters were sent
        the first time); the replay guard skips the events Redis did keep."""
        located, _ = self.split(messages)
        result = await self._apply_until_done(located)
        self.metrics.events.labels(self.topic).inc(result.applied_events)
        self.metrics.replayed.labels(self.topic).inc(result.skipped_events)
        self.metrics.recovered.labels(self.topic).inc(result.applied_events)

    async def _apply_until_done(self, located: list[Located]) -> ApplyResult:
        return await self._until_done(
            lambda: self._apply(self.topic, located), f"a batch of {len(located)} {self.topic} events"
        )

    async def _until_done(self, step: Callable[[], Awaitable[T]], what: str) -> T:
        # Redis being away slows ingest down; it never drops the batch. Kafka keeps the
        # uncommitted offsets, and the replay guard makes every retry safe.
        def held(exc: BaseException, delay_s: float) -> None:
            self.on_redis_down(True)
            self.metrics.redis_retries.inc()
            log.warning("Redis unavailable (%s); holding %s, retrying in %.1fs", exc, what, delay_s)

        result = await retry(step, on=TRANSIENT, max_s=self.retry_max_s, before_sleep=held)
        self.on_redis_down(False)
        return result


def _out_of_window(event: object, message: RawMessage, oldest: float, newest: float) -> Rejected:
    raw = message.value if message.value and message.value.lstrip()[:1] == b"{" else None
    return Rejected(
        REASON_OUT_OF_WINDOW,
        f"event time outside the aggregation window [{oldest:.0f}, {newest:.0f}]",
        raw or msgspec.json.encode(event),
    )


__all__ = ["BatchIngestor", "DeadLetterSink", "RawMessage"]
