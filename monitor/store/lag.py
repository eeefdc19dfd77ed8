"""Consumer progress in Redis: each worker writes its partitions' reports, the evaluator reads them."""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis

from monitor.aggregates.lag import PartitionProgress
from monitor.store.keys import Keys

# The hash outlives every report in it by far: a stale field is judged by its `at`, not by its
# absence; the TTL only bounds what a topic nobody consumes any more leaves behind.
LAG_TTL_S = 86_400


class LagStore:
    """The `consumer_lag` hashes, one per topic."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def write(self, topic: str, reports: Iterable[PartitionProgress]) -> None:
        """Record this worker's reports on `topic` (one round trip)."""
        mapping = {str(r.partition): r.encode() for r in reports}
        if not mapping:
            return
        key = self.keys.consumer_lag(topic)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]  # redis-py's Mapping is invariant
            pipe.expire(key, LAG_TTL_S)
            await pipe.execute()

    async def read(self, topic: str) -> dict[int, PartitionProgress]:
        """Every partition's latest report on `topic`, fresh or not."""
        raw = await self.redis.hgetall(self.keys.consumer_lag(topic))
        reports = {}
        for name, value in raw.items():
            partition = int(name)  # int() reads bytes too
            reports[partition] = PartitionProgress.decode(partition, value)
        return reports
