"""The Redis side of ingest and of reading windows back.

Writes: a batch is folded into one share per model; all shares go in one pipelined round trip, each
as one `apply_share.lua` call (atomic, one hash slot). A share that reaches back into offsets already
applied (a batch replayed after a crash or a rebalance) is refused by the script as a whole; we then
drop exactly the replayed events and send the rest, so nothing is counted twice or lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from monitor.aggregates.batch import HOUR_S, MINUTE_S, Located, Share, after_offsets, fold
from monitor.aggregates.window import WindowStats, sum_buckets
from monitor.exceptions import OffsetConflict
from monitor.store.keys import HOUR, MINUTE, Keys, guard_field

log = logging.getLogger(__name__)

Clock = Callable[[], float]
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
# A conflict means another writer applied part of a share; after this many rounds something is wrong.
MAX_CONFLICT_ROUNDS = 8


def _load_script() -> str:
    return resources.files("monitor.store").joinpath("lua/apply_share.lua").read_text()


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one batch did to Redis."""

    applied_events: int
    skipped_events: int  # already applied by an earlier delivery of the same offsets
    round_trips: int


class RedisStore:
    """Aggregates in Redis: the batch write path and window reads."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        minute_ttl_s: int,
        hour_ttl_s: int,
        clock: Clock = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.minute_ttl_s = minute_ttl_s
        self.hour_ttl_s = hour_ttl_s
        self.clock = clock
        self._apply = redis.register_script(_load_script())

    async def apply(self, topic: str, located: Sequence[Located]) -> ApplyResult:
        """Add a batch's events to their models' buckets; at most once per (model, offset)."""
        pending: dict[str, list[Located]] = {}
        for item in located:
            pending.setdefault(item.event.model_id, []).append(item)
        applied = skipped = rounds = 0
        while pending:
            if rounds == MAX_CONFLICT_ROUNDS:
                raise OffsetConflict(f"shares of {sorted(pending)} kept conflicting")
            rounds += 1
            shares = {model_id: fold(items)[model_id] for model_id, items in pending.items()}
            replies = await self._send(topic, list(shares.values()))
            retry: dict[str, list[Located]] = {}
            for model_id, reply in zip(shares, replies, strict=True):
                if not reply:
                    applied += shares[model_id].events
                    continue
                fresh = after_offsets(pending[model_id], _stored_offsets(reply))
                skipped += len(pending[model_id]) - len(fresh)
                if fresh:
                    retry[model_id] = fresh
            pending = retry
        return ApplyResult(applied, skipped, rounds)

    async def _send(self, topic: str, shares: list[Share]) -> list[list[bytes]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(self.keys.models(), *(share.model_id for share in shares))
            for share in shares:
                keys, payload = self._script_args(topic, share)
                await self._apply(keys=keys, args=[payload], client=pipe)
            replies = await pipe.execute()
        return [list(reply) for reply in replies[1:]]

    def _script_args(self, topic: str, share: Share) -> tuple[list[str], bytes]:
        model_id = share.model_id
        keys = [
            self.keys.offsets(model_id),
            self.keys.meta(model_id),
            self.keys.versions(model_id),
        ]
        buckets: list[list[object]] = []
        newest: dict[str, float] = {}
        floor = int(self.clock()) + MINUTE_S  # never hand Redis an expiry in the past
        for resolution, counters, ttl_s in (
            (MINUTE, share.minutes, self.minute_ttl_s),
            (HOUR, share.hours(), self.hour_ttl_s),
        ):
            for (version, start_s), counts in counters.items():
                keys.append(self.keys.bucket(model_id, version, resolution, start_s))
                buckets.append([max(start_s + ttl_s, floor), _flatten(counts)])
                if resolution == MINUTE:
                    newest[version] = max(newest.get(version, 0.0), float(start_s))
        payload = {
            "guard": [
                [guard_field(topic, partition), low, high]
                for partition, (low, high) in sorted(share.offsets.items())
            ],
            "last_event_s": repr(share.last_event_s),
            "events": share.events,
            "versions": {version: repr(seen) for version, seen in newest.items()},
            "ttl_s": self.hour_ttl_s,
            "buckets": buckets,
        }
        return keys, orjson.dumps(payload)

    # --- reads -------------------------------------------------------------------------------

    async def model_ids(self) -> list[str]:
        """Every model id that has sent a prediction."""
        members = await self.redis.smembers(self.keys.models())
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def versions(self, model_id: str) -> dict[str, float]:
        """The model's versions, each with the start of its newest minute bucket."""
        raw = await self.redis.hgetall(self.keys.versions(model_id))
        return {_text(k): float(v) for k, v in raw.items()}

    async def last_event_s(self, model_id: str) -> float | None:
        """Event time of the model's newest prediction, None if never seen."""
        raw = await self.redis.hget(self.keys.meta(model_id), "last_event_s")
        return None if raw is None else float(raw)

    async def minute_counters(
        self, model_id: str, version: str, start_s: float, end_s: float
    ) -> Counter[str]:
        """Summed counters of the minute buckets that start in [start_s, end_s)."""
        first = int(start_s) - int(start_s) % MINUTE_S
        starts = range(first, int(end_s), MINUTE_S)
        return await self._sum(model_id, version, MINUTE, starts)

    async def hour_counters(
        self, model_id: str, version: str, start_s: float, end_s: float
    ) -> Counter[str]:
        """Summed counters of the hour buckets that start in [start_s, end_s)."""
        first = int(start_s) - int(start_s) % HOUR_S
        return await self._sum(model_id, version, HOUR, range(first, int(end_s), HOUR_S))

    async def window(self, model_id: str, version: str, start_s: float, end_s: float) -> WindowStats:
        """Statistics of one version over [start_s, end_s) at minute resolution."""
        return WindowStats.from_counters(
            await self.minute_counters(model_id, version, start_s, end_s)
        )

    async def _sum(
        self, model_id: str, version: str, resolution: str, starts: range
    ) -> Counter[str]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in starts:
                pipe.hgetall(self.keys.bucket(model_id, version, resolution, start))
            buckets = await pipe.execute()
        return sum_buckets(buckets)

    async def wait_until_up(self, retry_max_s: float, on_retry: Callable[[Exception], None]) -> None:
        """Block until Redis answers a PING, backing off up to `retry_max_s` between tries."""
        delay = 0.1
        while True:
            try:
                await self.redis.ping()
                return
            except TRANSIENT as exc:
                on_retry(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, retry_max_s)


def _flatten(counts: Counter[str]) -> list[object]:
    flat: list[object] = []
    for name, value in counts.items():
        if value:
            flat.append(name)
            flat.append(value)
    return flat


def _stored_offsets(reply: list[bytes]) -> dict[int, int]:
    stored: dict[int, int] = {}
    for field_name, offset in zip(reply[::2], reply[1::2], strict=True):
        partition = int(_text(field_name).rsplit("|", 1)[1])
        stored[partition] = int(offset)
    return stored


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
