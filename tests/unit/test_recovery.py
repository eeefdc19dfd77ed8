"""The gap rule of recovery after Redis lost its last writes (pure: no services)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping

from monitor.agents.ingest import RawMessage
from monitor.agents.recovery import Gap, GapFinder, Recovery, first_offsets, last_offsets


def messages(partition: int, *offsets: int) -> list[RawMessage]:
    return [RawMessage("t", partition, o, None, b"{}") for o in offsets]


def test_first_and_last_offsets_per_partition() -> None:
    batch = messages(0, 7, 5, 6) + messages(3, 40)
    assert first_offsets(batch) == {0: 5, 3: 40}
    assert last_offsets(batch) == {0: 7, 3: 40}


def test_no_gap_when_the_batch_continues_or_replays_what_redis_holds() -> None:
    finder = GapFinder()
    assert finder.gaps({0: 11, 1: 3, 2: 0}, {0: 10, 1: 9, 2: None}) == []


def test_a_watermark_behind_the_batch_is_a_gap_unless_this_worker_left_it() -> None:
    finder = GapFinder()
    # After a restart the worker resumes at its committed offset 50; Redis kept offsets up to 39.
    assert finder.gaps({0: 50}, {0: 39}) == [Gap(0, 40, 50)]
    # Offsets 40..49 of a partition whose watermark this worker wrote hold no events (markers).
    finder.advanced({0: 39})
    assert finder.gaps({0: 50}, {0: 39}) == []
    # Redis lost the worker's last writes: its watermark is back at 20, the worker wrote 39.
    assert finder.gaps({0: 40}, {0: 20}) == [Gap(0, 21, 40)]


def test_a_revoked_partition_is_forgotten_and_a_lost_hash_is_reported() -> None:
    finder = GapFinder()
    finder.advanced({0: 10, 1: 5})
    finder.advanced({0: 3})  # never lowered
    assert finder.written == {0: 10, 1: 5}
    assert finder.lost_marks({0: None, 1: 5, 2: None}) == [0]
    finder.forget([0])
    assert finder.gaps({0: 30}, {0: 10}) == [Gap(0, 11, 30)]


class DictWatermarks:
    """Watermarks in a dict, with Redis's rule (raise, never lower)."""

    def __init__(self, stored: dict[int, int]) -> None:
        self.stored = stored

    async def read(self, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
        return {p: self.stored.get(p) for p in partitions}

    async def advance(self, topic: str, last: Mapping[int, int]) -> None:
        for p, offset in last.items():
            self.stored[p] = max(self.stored.get(p, -1), offset)


async def test_recovery_applies_the_gap_before_the_batch_then_raises_the_watermark() -> None:
    watermarks = DictWatermarks({0: 4})
    reads: list[tuple[int, int, int]] = []

    async def read_range(
        topic: str, partition: int, start: int, stop: int
    ) -> AsyncIterator[list[RawMessage]]:
        reads.append((partition, start, stop))
        yield messages(partition, *range(start, stop))

    applied: list[int] = []

    async def apply(chunk: list[RawMessage]) -> None:
        applied.extend(m.offset for m in chunk)

    recovery = Recovery("t", watermarks, read_range)  # type: ignore[arg-type]
    batch = messages(0, 8, 9)
    assert await recovery.close_gaps(batch, apply) == 3
    assert reads == [(0, 5, 8)] and applied == [5, 6, 7]
    await recovery.applied(batch)
    assert watermarks.stored == {0: 9}
    assert await recovery.close_gaps(messages(0, 10), apply) == 0
