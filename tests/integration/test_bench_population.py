"""The benchmarks' synthetic population has the key layout real ingest writes (on the real Redis).

bench/_population.py writes buckets, users sets and totals directly instead of through
`RedisStore.apply_predictions`; when the ingest layout changes and the population does not follow, the
benchmarks measure the wrong data (or stop running). This compares the two at a tiny scale: the same
kind of traffic through the real ingest and through the population must leave the same kinds of keys, with
the same Redis types, expiry and small-hash fields.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from bench._population import (
    NOT_FROM_INGEST,
    NOT_WRITTEN,
    Traffic,
    delete_prefix,
    key_shape,
    populate,
    synth_events,
    synth_labels,
    verify_against_ingest,
)
from monitor.aggregates.predictions import Located
from monitor.settings import Settings
from monitor.store.keys import Keys
from monitor.store.redis import RedisStore

pytestmark = pytest.mark.integration

# Hashes whose field names are layout (not traffic): compared field shape by field shape.
SMALL_HASHES = (
    "{model}:totals",
    "{model}:meta",
    "{model}:versions",
    "{model}:versions:first",
    "{model}:offsets",
)


def text(value: bytes | str) -> str:
    """A reply as text (the client does not decode)."""
    return value.decode() if isinstance(value, bytes) else value


def field_shape(name: str) -> str:
    """A hash field's kind, numeric parts (versions, partitions, bucket indexes) as `<n>`, and the
    group attribute and value of a group counter ("g|<attr>|<value>|stat") and the name of a flag
    counter ("f|<flag>") masked: which groups and flags a hash counts is traffic, not layout."""
    parts = ["<n>" if part.isdigit() else part for part in name.split("|")]
    for i, part in enumerate(parts[:-1]):
        if part == "g" and i + 3 < len(parts):
            parts[i + 1 : i + 3] = ["<attr>", "<value>"]
            break
        if part == "f" and i + 1 == len(parts) - 1:
            parts[i + 1] = "<flag>"
            break
    return "|".join(parts)


async def layout(redis: Redis, prefix: str) -> dict[str, tuple[str, bool, int, frozenset[str]]]:
    """Key shape -> (Redis type, every key has an expiry, longest TTL, field shapes of a small hash)."""
    found: dict[str, list[bytes]] = {}
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1_000):
        found.setdefault(key_shape(prefix, text(key)), []).append(key)
    result: dict[str, tuple[str, bool, int, frozenset[str]]] = {}
    for shape, keys in found.items():
        types = {text(await redis.type(k)) for k in keys}
        assert len(types) == 1, (shape, types)
        ttls = [int(await redis.ttl(k)) for k in keys]
        fields: set[str] = set()
        if shape in SMALL_HASHES:
            for k in keys:
                fields |= {field_shape(text(f)) for f in await redis.hkeys(k)}
        result[shape] = (types.pop(), min(ttls) > 0, max(ttls), frozenset(fields))
    return result


@pytest.fixture
async def redis(services: tuple[str, str]) -> AsyncIterator[Redis]:
    client = Redis.from_url(services[1])
    yield client
    await client.aclose()


async def ingest(redis: Redis, prefix: str, settings: Settings) -> None:
    """A few minutes of healthy traffic with some failures and labels, for a one-version model and a
    model running a canary, through the real write paths."""
    store = RedisStore(
        redis, Keys(prefix), minute_ttl_s=settings.minute_bucket_ttl_s, hour_ttl_s=settings.hour_bucket_ttl_s
    )
    rng = random.Random(5)
    now = int(time.time())
    start = now - now % 60 - 180
    traffic = Traffic(error_rate=0.05)
    events = [
        *synth_events(rng, "credit-scoring", "1", start, 180, 300, traffic),
        *synth_events(rng, "model-0001", "1", start, 180, 150, traffic),
        *synth_events(rng, "model-0001", "2", start, 180, 150, traffic),
    ]
    labels = synth_labels(rng, events, 0.5, 0.9)
    await store.apply_predictions(
        settings.topics.predictions, [Located(e, i % 2, i) for i, e in enumerate(events)]
    )
    await store.apply_labels(settings.topics.labels, [Located(e, i % 2, i) for i, e in enumerate(labels)])


async def test_population_writes_the_key_kinds_ingest_writes(redis: Redis) -> None:
    settings = Settings()
    real, synthetic = f"bpi-{uuid.uuid4().hex[:8]}", f"bpp-{uuid.uuid4().hex[:8]}"
    try:
        await ingest(redis, real, settings)
        population = await populate(
            redis, Keys(synthetic), 2, history_hours=3, minute_history=5, settings=settings
        )
        assert population.pairs == 3
        ingested, populated = await layout(redis, real), await layout(redis, synthetic)

        # The same kinds, short of what the population leaves out or adds on purpose.
        assert set(NOT_WRITTEN) <= set(ingested), "NOT_WRITTEN names key kinds ingest no longer writes"
        assert set(populated) == (set(ingested) - set(NOT_WRITTEN)) | set(NOT_FROM_INGEST)
        assert {"{model}:users:seen:<n>", "{model}:users:served:<n>", "{model}:totals"} <= set(populated)
        for shape in set(populated) & set(ingested):
            kind, expires, longest, fields = populated[shape]
            want_kind, want_expires, want_longest, want_fields = ingested[shape]
            assert (kind, expires) == (want_kind, want_expires), shape
            if expires:  # the newest key of a kind lives as long (minute starts a few minutes apart)
                assert abs(longest - want_longest) <= 600, (shape, longest, want_longest)
            assert fields == want_fields, (shape, sorted(fields ^ want_fields))
        # Every bucket counter, the label join's and the groups' too, beside the latency sum.
        assert {
            "<n>|n",
            "<n>|err",
            "<n>|dec",
            "<n>|latn",
            "<n>|latus",
            "<n>|lat|<n>",
            "<n>|lab",
            "<n>|cor",
        } <= populated["{model}:totals"][3]
        assert {"<n>|g|<attr>|<value>|n", "<n>|g|<attr>|<value>|lab"} <= populated["{model}:totals"][3]
    finally:
        await delete_prefix(redis, real)
        await delete_prefix(redis, synthetic)


async def test_population_contents_match_ingest(redis: Redis) -> None:
    # Bucket fields, users sets member by member and the totals hash, against RedisStore's writes.
    summary = await verify_against_ingest(redis, f"bpv-{uuid.uuid4().hex[:8]}")
    # 3 minute buckets, their 1 hour bucket (2 in the first minutes of an hour), 2 users sets, totals.
    hours = 2 if time.gmtime().tm_min < 3 else 1
    assert summary.startswith(f"ingest check: {6 + hours} bucket hashes, users sets and the totals hash")
