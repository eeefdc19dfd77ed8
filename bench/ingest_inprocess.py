"""Ingest without Kafka or Faust: decode, fold and `RedisStore.apply_predictions` of N events, one process.

Separates the worker's own per-event cost from the broker's and Faust's: events as in
`bench/ingest_throughput.py` (20 models, 6 group attributes, in time order at the density of
1,000,000 events an hour), encoded as arrays of 100, decoded by the ingest decoder, then folded and
applied to the local Redis (under a prefix of its own, deleted afterwards) in batches of `--batch`
messages. Prints events/s for the decode alone, the fold alone, and fold + apply together.
Usage: .venv/bin/python bench/ingest_inprocess.py [--events 50000] [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import orjson
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingest_throughput import events  # noqa: E402  (bench/ is on sys.path when run as a script)

from monitor.aggregates.predictions import Located, fold  # noqa: E402
from monitor.dev import services  # noqa: E402
from monitor.events import EventDecoder, PredictionEvent  # noqa: E402
from monitor.settings import Settings  # noqa: E402
from monitor.store.keys import Keys  # noqa: E402
from monitor.store.redis import RedisStore  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=100, help="messages (arrays of 100) per batch")
    args = parser.parse_args()
    n, per_batch = args.events, args.batch * 100
    status = await asyncio.to_thread(services.up)
    data = events(n, span_s=n / 1_000_000 * 3600)
    values = [orjson.dumps(data[i : i + 100]) for i in range(0, n, 100)]
    decoder = EventDecoder(PredictionEvent, 1 << 20)

    started = time.perf_counter()
    decoded = [decoder.decode(value)[0] for value in values]
    decode_s = time.perf_counter() - started
    located = [Located(e, i % 4, i // 4) for i, evs in enumerate(decoded) for e in evs]

    started = time.perf_counter()
    for i in range(0, n, per_batch):
        fold(located[i : i + per_batch])
    fold_s = time.perf_counter() - started

    redis = Redis.from_url(status.redis_url)
    settings = Settings()
    prefix = f"bench-inproc-{uuid.uuid4().hex[:6]}"
    store = RedisStore(
        redis, Keys(prefix), minute_ttl_s=settings.minute_bucket_ttl_s, hour_ttl_s=settings.hour_bucket_ttl_s
    )
    try:
        started = time.perf_counter()
        for i in range(0, n, per_batch):
            await store.apply_predictions("predictions", located[i : i + per_batch])
        apply_s = time.perf_counter() - started
    finally:
        async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
            await redis.delete(key)
        await redis.aclose()
    print(
        f"{n:,} events in batches of {per_batch:,}: decode {n / decode_s:,.0f} events/s, "
        f"fold {n / fold_s:,.0f} events/s, fold + apply to Redis {n / apply_s:,.0f} events/s"
    )


if __name__ == "__main__":
    asyncio.run(main())
