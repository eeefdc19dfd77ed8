"""How far behind its input a worker is, per partition, measured as time (pure, no I/O).

A worker knows, for each partition it owns, the newest record its ingest agent has applied (offset
and Kafka record timestamp) and the partition's high-water mark (the offset the next record will
get). It is behind while records exist past what it applied; its lag is then the age of the newest
applied record, i.e. how old the evidence is that it is judging from.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """What one worker reports of one partition at one moment (`at`, the worker's clock).

    `behind` is None when the worker cannot tell (no high-water mark fetched yet, or nothing
    applied and no committed offset to compare with); `lag_s` is None unless it is known.
    """

    partition: int
    offset: int | None  # newest applied record (this worker, since it got the partition)
    record_ts: float | None  # that record's Kafka timestamp, epoch seconds
    highwater: int | None  # next offset the broker will assign
    behind: bool | None
    lag_s: float | None
    at: float

    def encode(self) -> bytes:
        """The report as the JSON a Redis hash field holds."""
        return orjson.dumps([self.offset, self.record_ts, self.highwater, self.behind, self.lag_s, self.at])

    @classmethod
    def decode(cls, partition: int, raw: bytes | str) -> PartitionProgress:
        """Inverse of `encode`."""
        offset, record_ts, highwater, behind, lag_s, at = orjson.loads(raw)
        return cls(partition, offset, record_ts, highwater, behind, lag_s, float(at))


def progress(
    partition: int,
    *,
    applied_offset: int | None,
    applied_ts: float | None,
    committed: int | None,
    highwater: int | None,
    now: float,
) -> PartitionProgress:
    """Judge one partition: behind while `max(applied + 1, committed) < highwater`.

    `committed` is the group's committed offset (the next offset to read, Kafka's meaning): it
    covers a partition that had nothing new since this worker got it, and records that another
    worker applied before a rebalance. The lag is `now - applied_ts` while behind, 0 when caught
    up, and unknown when behind but nothing was applied yet (the worker has not read far enough
    to know how old its input is).
    """
    done = max(-1 if applied_offset is None else applied_offset + 1, -1 if committed is None else committed)
    if highwater is None:
        behind: bool | None = None
    elif highwater <= 0:
        behind = False  # an empty partition
    elif done < 0:
        behind = None  # nothing applied, nothing committed: cannot tell yet
    else:
        behind = done < highwater
    lag_s: float | None
    if behind is False:
        lag_s = 0.0
    elif behind and applied_ts is not None:
        lag_s = max(0.0, now - applied_ts)
    else:
        lag_s = None
    return PartitionProgress(partition, applied_offset, applied_ts, highwater, behind, lag_s, now)
