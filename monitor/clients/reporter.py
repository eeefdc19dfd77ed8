"""The reporter a model server uses to send its predictions: many events per Kafka message.

The monitor's throughput comes from batches (docs/architecture.md), so events are buffered and
sent as one JSON array per message: when `max_batch` events wait, or `linger_s` after the oldest
waiting event arrived, whichever is first. Each event is encoded when it is reported, so a value
that cannot be encoded fails that one `report` call and never a whole batch. A full buffer makes
`report` wait (back-pressure) rather than drop: the monitor must see every decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, NamedTuple

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from monitor.clients.security import PLAINTEXT, KafkaSecurity
from monitor.events import PredictionEvent
from monitor.retry import retry

log = logging.getLogger(__name__)

# The monitor dead-letters values over its max_value_bytes (1 MiB by default) as too_large,
# so a batch is also cut by size; the default leaves room under that limit.
DEFAULT_MAX_BATCH_BYTES = 1_000_000

_RETRY_MIN_S = 0.1
_RETRY_MAX_S = 5.0


class _Pending(NamedTuple):
    """One encoded event waiting in the buffer."""

    value: bytes
    request_id: bytes | None
    at: float  # time.monotonic() when it was reported


class PredictionReporter:
    """Buffers prediction events and sends them to Kafka as JSON arrays."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        max_batch: int = 500,
        linger_s: float = 0.05,
        max_buffer: int = 100_000,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        if max_batch < 1 or max_buffer < 1 or linger_s < 0 or max_batch_bytes < 2:
            raise ValueError("max_batch, max_buffer and max_batch_bytes must be positive, linger_s ≥ 0")
        self.bootstrap = bootstrap
        self.topic = topic
        self.security = security  # TLS / SASL to the brokers (monitor.clients.security)
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.max_buffer = max_buffer
        self.max_batch_bytes = max_batch_bytes
        self.sent_events = 0
        self.sent_messages = 0
        self._encoder = msgspec.json.Encoder()
        self._pending: deque[_Pending] = deque()
        self._pending_bytes = 0
        self._sending = 0  # events taken from the buffer whose message is not acknowledged yet
        self._flushing = 0  # flush() calls waiting: send without lingering
        self._closing = False
        self._wake = asyncio.Event()  # something for the sender to look at
        self._changed = asyncio.Condition()  # buffer space freed or a batch acknowledged
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect to the broker and start the sender."""
        if self._producer is not None:
            raise RuntimeError("PredictionReporter is already started")
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=0,  # batching happens here, one array per message
            max_request_size=max(1_048_576, self.max_batch_bytes + 65_536),
            **self.security.client_options(),
        )
        await producer.start()
        self._producer = producer
        self._closing = False
        self._task = asyncio.create_task(self._run(producer), name=f"reporter:{self.topic}")

    async def stop(self, *, timeout_s: float = 30.0) -> None:
        """Send what is buffered (waiting at most `timeout_s`), then disconnect."""
        task, producer = self._task, self._producer
        if task is None or producer is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            log.error(
                "reporter stopped with %d events unsent to %s after %.0fs",
                len(self._pending) + self._sending,
                self.topic,
                timeout_s,
            )
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            self._task = self._producer = None
            await producer.stop()

    async def __aenter__(self) -> PredictionReporter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def buffered(self) -> int:
        """Events reported and not yet acknowledged by the broker."""
        return len(self._pending) + self._sending

    async def report(self, event: dict[str, Any] | PredictionEvent) -> None:
        """Buffer one event; waits while the buffer is full. Raises TypeError if it cannot be encoded."""
        self._check_running()
        value = self._encoder.encode(event)
        if len(value) + 2 > self.max_batch_bytes:
            raise ValueError(f"event is {len(value)} bytes, over max_batch_bytes={self.max_batch_bytes}")
        if len(self._pending) >= self.max_buffer:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self._pending) < self.max_buffer or self._stopped())
            self._check_running()
        request_id = event.get("request_id") if isinstance(event, dict) else event.request_id
        key = None if request_id is None else str(request_id).encode()
        self._pending.append(_Pending(value, key, time.monotonic()))
        self._pending_bytes += len(value) + 1
        # Wake the sender when a batch starts (to time its linger) and when one is full.
        if len(self._pending) == 1 or self._full():
            self._wake.set()

    async def flush(self) -> None:
        """Send everything buffered now and return once the broker acknowledged it."""
        self._check_running()
        self._flushing += 1
        self._wake.set()
        try:
            async with self._changed:
                await self._changed.wait_for(lambda: self.buffered == 0 or self._stopped())
        finally:
            self._flushing -= 1
        self._check_running()

    def _full(self) -> bool:
        return len(self._pending) >= self.max_batch or self._pending_bytes >= self.max_batch_bytes

    def _stopped(self) -> bool:
        return self._task is None or self._task.done()

    def _check_running(self) -> None:
        if self._task is None or self._closing:
            raise RuntimeError("PredictionReporter is not running (start() it; stop() ends it)")
        if self._task.done():
            self._task.result()  # re-raise what killed the sender
            raise RuntimeError("the reporter's sender stopped")

    async def _run(self, producer: AIOKafkaProducer) -> None:
        """Send batches until stopped with an empty buffer."""
        try:
            while self._pending or not self._closing:
                if not self._pending:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if not (self._full() or self._flushing or self._closing):
                    linger = self._pending[0].at + self.linger_s - time.monotonic()
                    if linger > 0:
                        self._wake.clear()
                        try:
                            await asyncio.wait_for(self._wake.wait(), linger)
                        except TimeoutError:
                            pass
                        continue
                await self._send(producer, self._take())
        finally:
            async with self._changed:
                self._changed.notify_all()

    def _take(self) -> list[_Pending]:
        """Remove the next batch from the buffer: ≤ max_batch events, ≤ max_batch_bytes as an array."""
        batch = [self._pending.popleft()]
        size = len(batch[0].value) + 2
        while self._pending and len(batch) < self.max_batch:
            grown = size + len(self._pending[0].value) + 1
            if grown > self.max_batch_bytes:
                break
            size = grown
            batch.append(self._pending.popleft())
        self._pending_bytes -= sum(len(item.value) + 1 for item in batch)
        self._sending = len(batch)
        return batch

    async def _send(self, producer: AIOKafkaProducer, batch: list[_Pending]) -> None:
        """Send one batch as one message, retrying broker errors until it is acknowledged."""
        async with self._changed:
            self._changed.notify_all()  # its buffer space is free for waiting reporters
        value = b"[" + b",".join(item.value for item in batch) + b"]"

        def unsent(exc: BaseException, delay_s: float) -> None:
            # At least once: a retried message may land twice if the first try did land.
            log.warning(
                "reporter: %d events to %s not sent (%s); retrying in %.1fs",
                len(batch),
                self.topic,
                exc,
                delay_s,
            )

        await retry(
            lambda: producer.send_and_wait(self.topic, value, key=batch[0].request_id),
            on=KafkaError,
            first_s=_RETRY_MIN_S,
            max_s=_RETRY_MAX_S,
            before_sleep=unsent,
        )
        self.sent_events += len(batch)
        self.sent_messages += 1
        self._sending = 0
        async with self._changed:
            self._changed.notify_all()
