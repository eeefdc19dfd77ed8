"""Reading a topic back from Kafka with a consumer of its own: no group, nothing committed.

Three parts of the monitor read records outside the consumer group: ingest reading again the
offsets Redis lost (`monitor.agents.recovery`), the evaluator taking each model's latest control
message after a Redis restart (`monitor.incidents.reconcile`), and the audit log's check and
restore against its anchor (`monitor.audit.anchor`). They share the one subtle part, here: when to
stop. A partition is done once the consumer's position reaches the offset it should stop at
(offsets with no record, such as transaction markers or what compaction removed, are skipped by
the position), or the end of the log if that comes first.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from monitor.topics import TOPIC_MAX_MESSAGE_BYTES


def own_consumer(bootstrap: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer for reading back: no group, nothing committed; an offset that retention has
    deleted starts at the oldest one kept."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=TOPIC_MAX_MESSAGE_BYTES,
        fetch_max_bytes=TOPIC_MAX_MESSAGE_BYTES,
        **options,
    )


async def partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition] | None:
    """Every partition of `topic` (None if the topic does not exist), without naming the topic to
    the broker first: naming a missing one would auto-create it where the broker allows that."""
    if topic not in await consumer.topics():
        return None
    # Assigning a partition makes the client keep the topic's metadata (its partition count).
    first = TopicPartition(topic, 0)
    consumer.assign([first])
    await consumer.seek_to_beginning(first)
    known = consumer.partitions_for_topic(topic) or {0}
    return [TopicPartition(topic, p) for p in sorted(known)]


async def records(
    consumer: AIOKafkaConsumer,
    starts: Mapping[TopicPartition, int | None],
    stops: Mapping[TopicPartition, int] | None = None,
    *,
    chunk: int = 1000,
    timeout_s: float | None = None,
) -> AsyncIterator[list[Any]]:
    """The records of each partition from its start (None: the beginning of the log) up to its stop
    (exclusive; default: the end of the log now), in chunks of up to `chunk`, each partition's in
    offset order. Raises TimeoutError if `timeout_s` passes before every partition is read."""
    tps = list(starts)
    consumer.assign(tps)
    for tp, start in starts.items():
        if start is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, start)
    ends = await consumer.end_offsets(tps)
    until = {tp: min(ends[tp], stops[tp]) if stops is not None else ends[tp] for tp in tps}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    remaining = [tp for tp in tps if await consumer.position(tp) < until[tp]]
    while remaining:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(
                f"could not read {sorted(str(tp) for tp in remaining)} to the end in {timeout_s} s"
            )
        batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=chunk)
        for tp, found in batches.items():
            kept = [r for r in found if r.offset < until[tp]]
            if kept:
                yield kept
        remaining = [tp for tp in remaining if await consumer.position(tp) < until[tp]]


__all__ = ["own_consumer", "partitions", "records"]
