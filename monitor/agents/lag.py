"""What the ingest agent has applied, per partition: the worker's half of the catch-up hold.

The agent records the newest record of each partition once its batch is in Redis; a timer turns
that, with the consumer's high-water marks and committed offsets, into one progress report per
owned partition (see `monitor.aggregates.lag`) and writes it where the evaluator reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from monitor.agents.ingest import RawMessage
from monitor.aggregates.lag import PartitionProgress, progress


class AppliedTracker:
    """Newest applied (offset, record timestamp) per partition of one topic."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._newest: dict[int, tuple[int, float | None]] = {}

    def applied(self, messages: Sequence[RawMessage]) -> None:
        """Note a batch that is now in Redis."""
        newest = self._newest
        for message in messages:
            if message.topic != self.topic:
                continue
            kept = newest.get(message.partition)
            if kept is None or message.offset > kept[0]:
                newest[message.partition] = (message.offset, message.timestamp)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop what was noted of partitions this worker no longer owns (revoked)."""
        for partition in partitions:
            self._newest.pop(partition, None)

    def reports(
        self,
        assigned: Iterable[int],
        *,
        highwater: Callable[[int], int | None],
        committed: Callable[[int], int | None],
        now: float,
    ) -> list[PartitionProgress]:
        """One report per partition in `assigned`; partitions no longer assigned are forgotten."""
        owned = set(assigned)
        self.forget([p for p in self._newest if p not in owned])
        out = []
        for partition in sorted(owned):
            offset, ts = self._newest.get(partition, (None, None))
            out.append(
                progress(
                    partition,
                    applied_offset=offset,
                    applied_ts=ts,
                    committed=committed(partition),
                    highwater=highwater(partition),
                    now=now,
                )
            )
        return out
