"""The audit trail's external anchor: every entry also on the Kafka `audit` topic, and read back.

The topic has one partition (its order is the chain's) and keeps every record for ever
(`retention.ms=-1`, not compacted: compaction by key would keep one entry per incident), see
monitor/topics.py. Each entry is sent with acks=all by an idempotent producer before the API answers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from monitor.exceptions import ServicesError

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
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=int(timeout_s * 1000),
        **client_options,
    )
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
    except Exception as exc:
        await consumer.stop()
        raise ServicesError(
            f"Kafka at {bootstrap} does not answer ({type(exc).__name__}: {exc}); "
            "set MONITOR_KAFKA_BOOTSTRAP, or pass --no-anchor to check the Redis chain alone"
        ) from None
    try:
        if topic not in await consumer.topics():
            return None
        # Assigning a partition makes the client keep the topic's metadata (the partition count).
        tps = [TopicPartition(topic, 0)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        known = consumer.partitions_for_topic(topic) or {0}
        if len(known) > 1:  # made by hand with more partitions: read them all (the seq orders entries)
            tps = [TopicPartition(topic, p) for p in sorted(known)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        found: list[tuple[int, int, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout_s
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                raise ServicesError(f"could not read the audit topic {topic!r} to its end in {timeout_s:g} s")
            for tp, records in (await consumer.getmany(*tps, timeout_ms=500)).items():
                for record in records:
                    if record.offset < end[tp]:
                        found.append((tp.partition, record.offset, _entry(record.value, record.offset)))
        return [entry for _, _, entry in sorted(found, key=lambda f: (f[0], f[1]))]
    finally:
        await consumer.stop()


def _entry(value: bytes | None, offset: int) -> dict[str, Any]:
    """A record's entry; a record that is no entry becomes one without a seq (verify names it)."""
    try:
        entry = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return {"offset": offset}
    return entry if isinstance(entry, dict) else {"offset": offset}
