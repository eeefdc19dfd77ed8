"""Exact recovery after Redis loses its last writes: what Redis no longer has is read again from Kafka.

Redis keeps its data in an append-only file fsynced once a second, so a crash of its machine can
lose up to that last second. The consumer group's committed offsets are then ahead of what Redis
holds, and the events in between would be missing from the aggregates for good. So Redis itself
holds how far each partition is applied: once every model step of a batch has answered, ingest
raises the partition's watermark (`Keys.applied`). Redis executes and logs commands in order, and
a truncated append-only file keeps a prefix of them, so a surviving watermark never claims writes
that did not survive.

Before each batch, ingest compares the watermark with the batch's first offset. A gap this worker
did not leave itself (its own last watermark is remembered, so records that are no events, such
as transaction markers, do not send it back every batch) is read again from the broker and
applied first, through the same per-model replay guard, which skips whatever did survive: the
aggregates come out exact, neither short nor counted twice. Events read again are not
dead-lettered again: the first delivery did that before its offsets could be committed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis

from monitor.agents.ingest import RawMessage
from monitor.store.keys import Keys

log = logging.getLogger(__name__)

# Raise each field to its value, never lower it: the partition's previous owner may still be
# finishing a batch while its new owner writes a later one.
_RAISE = """
for i = 1, #ARGV, 2 do
  local stored = redis.call('HGET', KEYS[1], ARGV[i])
  if not stored or tonumber(stored) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""


class RangeReader(Protocol):
    """Reads the records of one partition from `start` up to `stop` (exclusive), in chunks."""

    def __call__(self, topic: str, partition: int, start: int, stop: int) -> AsyncIterator[list[RawMessage]]:
        """Each chunk in offset order; fewer records than offsets where the log has none (compacted,
        deleted by retention, or transaction markers)."""
        ...


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets [start, stop) of a partition that Redis does not hold and this worker will not read."""

    partition: int
    start: int
    stop: int


class Watermarks:
    """Per topic, a hash partition -> the last offset whose batch is wholly in Redis."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._raise = redis.register_script(_RAISE)

    async def read(self, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
        """The stored watermark of each partition (None: Redis has none)."""
        wanted = sorted(set(partitions))
        values = await self.redis.hmget(self.keys.applied(topic), [str(p) for p in wanted])
        return {p: None if v is None else int(v) for p, v in zip(wanted, values, strict=True)}

    async def advance(self, topic: str, last: Mapping[int, int]) -> None:
        """Raise each partition's watermark to `last[partition]` (never lowers one)."""
        if last:
            args = [part for p, offset in sorted(last.items()) for part in (str(p), str(offset))]
            await self._raise(keys=[self.keys.applied(topic)], args=args)


class GapFinder:
    """Which offsets of a batch's partitions Redis lacks (pure; remembers what this worker wrote)."""

    def __init__(self) -> None:
        self.written: dict[int, int] = {}

    def gaps(self, first: Mapping[int, int], stored: Mapping[int, int | None]) -> list[Gap]:
        """A gap per partition whose watermark stops short of the batch's first offset, unless the
        watermark is the one this worker left (the offsets between then hold no events)."""
        found = []
        for partition, start in sorted(first.items()):
            mark = stored.get(partition)
            if mark is None or mark + 1 >= start or self.written.get(partition) == mark:
                continue
            found.append(Gap(partition, mark + 1, start))
        return found

    def lost_marks(self, stored: Mapping[int, int | None]) -> list[int]:
        """Partitions this worker wrote a watermark for that Redis no longer has at all."""
        return sorted(p for p, mark in stored.items() if mark is None and p in self.written)

    def advanced(self, last: Mapping[int, int]) -> None:
        """Note the watermarks this worker wrote."""
        for partition, offset in last.items():
            if offset > self.written.get(partition, -1):
                self.written[partition] = offset

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop partitions this worker no longer owns: their next owner moves their watermarks."""
        for partition in partitions:
            self.written.pop(partition, None)


def first_offsets(messages: Sequence[RawMessage]) -> dict[int, int]:
    """The lowest offset of each partition in a batch."""
    first: dict[int, int] = {}
    for m in messages:
        if m.offset < first.get(m.partition, m.offset + 1):
            first[m.partition] = m.offset
    return first


def last_offsets(messages: Sequence[RawMessage]) -> dict[int, int]:
    """The highest offset of each partition in a batch."""
    last: dict[int, int] = {}
    for m in messages:
        if m.offset > last.get(m.partition, -1):
            last[m.partition] = m.offset
    return last


class Recovery:
    """One topic's watermarks: read before a batch (closing any gap first), raised after it."""

    def __init__(self, topic: str, watermarks: Watermarks, read_range: RangeReader) -> None:
        self.topic = topic
        self.watermarks = watermarks
        self.read_range = read_range
        self.finder = GapFinder()

    async def close_gaps(
        self, messages: Sequence[RawMessage], apply: Callable[[list[RawMessage]], Awaitable[Any]]
    ) -> int:
        """Apply, before `messages`, what Redis lacks of the offsets before them; returns how many
        messages were read again."""
        first = first_offsets(messages)
        stored = await self.watermarks.read(self.topic, first)
        for partition in self.finder.lost_marks(stored):
            log.error(
                "Redis holds no applied offsets of %s partition %d though this worker wrote up to %d: "
                "Redis lost its data (was it started without its append-only file?); the aggregates "
                "before that offset are incomplete",
                self.topic,
                partition,
                self.finder.written[partition],
            )
            self.finder.forget([partition])
        read = 0
        for gap in self.finder.gaps(first, stored):
            log.warning(
                "Redis holds %s partition %d applied only up to offset %d, and the next batch starts at "
                "%d (Redis lost its last writes): reading those %d offsets from Kafka again",
                self.topic,
                gap.partition,
                gap.start - 1,
                gap.stop,
                gap.stop - gap.start,
            )
            async for chunk in self.read_range(self.topic, gap.partition, gap.start, gap.stop):
                await apply(chunk)
                read += len(chunk)
            self.finder.advanced({gap.partition: gap.stop - 1})
        return read

    async def applied(self, messages: Sequence[RawMessage]) -> None:
        """Raise the watermarks past a batch that is now wholly in Redis."""
        last = last_offsets(messages)
        await self.watermarks.advance(self.topic, last)
        self.finder.advanced(last)


class KafkaRangeReader:
    """Reads a range of one partition with a consumer of its own (`monitor.topic_reader`), started
    for the read and closed after it: gaps are rare, a Redis crash."""

    def __init__(self, bootstrap: str, chunk: int = 1000, **options: Any) -> None:
        self.bootstrap = bootstrap
        self.chunk = chunk
        self.options = options

    async def __call__(
        self, topic: str, partition: int, start: int, stop: int
    ) -> AsyncIterator[list[RawMessage]]:
        """The records of `topic`/`partition` with offsets in [start, stop), `chunk` at a time."""
        from aiokafka import TopicPartition

        from monitor.topic_reader import own_consumer, records

        consumer = own_consumer(self.bootstrap, **self.options)
        await consumer.start()
        try:
            tp = TopicPartition(topic, partition)
            async for found in records(consumer, {tp: start}, {tp: stop}, chunk=self.chunk):
                yield [_raw(r) for r in found]
        finally:
            await consumer.stop()


def _raw(record: Any) -> RawMessage:
    timestamp = record.timestamp / 1000 if record.timestamp is not None else None
    return RawMessage(record.topic, record.partition, record.offset, record.key, record.value, timestamp)


__all__ = [
    "Gap",
    "GapFinder",
    "KafkaRangeReader",
    "RangeReader",
    "Recovery",
    "Watermarks",
    "first_offsets",
    "last_offsets",
]
