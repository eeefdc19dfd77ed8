"""The audit trail's external anchor: every entry also on the Kafka `audit` topic, and read back.

The topic has one partition (its order is the chain's) and keeps every record for ever
(`retention.ms=-1`, not compacted: compaction by key would keep one entry per incident), see
monitor/topics.py. Each entry is sent with acks=all by an idempotent producer before the API answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from monitor.exceptions import ServicesError
from monitor.topic_reader import own_consumer, partitions, records

READ_TIMEOUT_S = 30.0


class KafkaAnchor:
    """Publishes audit entries on the audit topic (key = the entry's target: incident or model id)."""

    def __init__(self, bootstrap: str, topic: str, **client_options: Any) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.client_options = client_options  # e.g. security settings, given to the producer as they are
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        # Started on first use, on the loop that serves the API; every worker appends, not only the leader.
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=0,
                    request_timeout_ms=10_000,
                    **self.client_options,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()  # a producer that never started still holds its client
                    raise
                self._producer = producer
            return self._producer

    async def publish(self, entry: dict[str, Any], raw: bytes) -> None:
        """Send one entry and wait for every in-sync replica's acknowledgement."""
        producer = await self._started()
        await producer.send_and_wait(self.topic, raw, key=str(entry.get("target", "")).encode())

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


async def read_anchor(
    bootstrap: str, topic: str, *, timeout_s: float = READ_TIMEOUT_S, **client_options: Any
) -> list[dict[str, Any]] | None:
    """Every entry on the audit topic, in topic order; None if the topic does not exist."""
    consumer = own_consumer(bootstrap, request_timeout_ms=int(timeout_s * 1000), **client_options)
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
    except Exception as exc:
        await consumer.stop()
        raise ServicesError(
            f"Kafka at {bootstrap} does not answer ({type(exc).__name__}: {exc}); "
            "set MONITOR_KAFKA_BOOTSTRAP, or pass --no-anchor to check the Redis chain alone"
        ) from None
    try:
        tps = await partitions(consumer, topic)
        if tps is None:
            return None
        # One partition as the monitor makes it; one made by hand with more is read whole (the seq
        # orders the entries).
        found: list[tuple[int, int, dict[str, Any]]] = []
        async for chunk in records(consumer, dict.fromkeys(tps), timeout_s=timeout_s):
            found.extend((r.partition, r.offset, _entry(r.value, r.offset)) for r in chunk)
        return [entry for _, _, entry in sorted(found, key=lambda f: (f[0], f[1]))]
    except TimeoutError:
        raise ServicesError(
            f"could not read the audit topic {topic!r} to its end in {timeout_s:g} s"
        ) from None
    finally:
        await consumer.stop()


def _entry(value: bytes | None, offset: int) -> dict[str, Any]:
    """A record's entry; a record that is no entry becomes one without a seq (verify names it)."""
    try:
        entry = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return {"offset": offset}
    return entry if isinstance(entry, dict) else {"offset": offset}
