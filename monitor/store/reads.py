"""What the API and `/metrics` read of ingest's aggregates: model ids, versions, totals, windows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from redis.asyncio import Redis

from monitor.aggregates.predictions import MINUTE_S, split_totals
from monitor.aggregates.window import WindowStats, sum_buckets
from monitor.store.keys import MINUTE, Keys
from monitor.text import text


class StoreReads:
    """The reads of `RedisStore` (its writes are the apply_* calls)."""

    redis: Redis
    keys: Keys

    async def model_ids(self) -> list[str]:
        """Every model id that has sent a prediction (`store.catalog.read_model_index` has every model
        with any state)."""
        members = await self.redis.smembers(self.keys.models())
        return sorted(text(m) for m in members)

    async def versions(self, model_id: str) -> dict[str, float]:
        """The model's versions, each with the start of its newest minute bucket."""
        raw = await self.redis.hgetall(self.keys.versions(model_id))
        return {text(k): float(v) for k, v in raw.items()}

    async def totals(self, model_ids: Sequence[str]) -> dict[str, dict[str, Counter[str]]]:
        """Per model, version -> its monotonic totals (see `Keys.totals`), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for model_id in model_ids:
                pipe.hgetall(self.keys.totals(model_id))
            replies = await pipe.execute()
        return {model_id: split_totals(raw) for model_id, raw in zip(model_ids, replies, strict=True)}

    async def last_events(self, model_ids: Sequence[str]) -> dict[str, float]:
        """Event time of each model's newest prediction (models never seen are left out), in one round
        trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for model_id in model_ids:
                pipe.hget(self.keys.meta(model_id), "last_event_s")
            replies = await pipe.execute()
        return {m: float(raw) for m, raw in zip(model_ids, replies, strict=True) if raw is not None}

    async def minute_counters(
        self, model_id: str, version: str, start_s: float, end_s: float
    ) -> Counter[str]:
        """Summed counters of the minute buckets that start in [start_s, end_s)."""
        first = int(start_s) - int(start_s) % MINUTE_S
        starts = range(first, int(end_s), MINUTE_S)
        return await self._sum(model_id, version, MINUTE, starts)

    async def window(self, model_id: str, version: str, start_s: float, end_s: float) -> WindowStats:
        """Statistics of one version over [start_s, end_s) at minute resolution."""
        return WindowStats.from_counters(await self.minute_counters(model_id, version, start_s, end_s))

    async def _sum(self, model_id: str, version: str, resolution: str, starts: range) -> Counter[str]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in starts:
                pipe.hgetall(self.keys.bucket(model_id, version, resolution, start))
            buckets = await pipe.execute()
        return sum_buckets(buckets)
