"""The window reader on the real Redis: cached sums equal a full read, and go stale only as documented."""

from __future__ import annotations

import itertools
import random
import time
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from redis.asyncio import Redis

from monitor.aggregates.predictions import Located
from monitor.events import PredictionEvent
from monitor.store import windows as windows_module
from monitor.store.keys import Keys
from monitor.store.redis import RedisStore
from monitor.store.windows import WindowReader

pytestmark = pytest.mark.integration

NOW = time.time() // 60 * 60 + 30  # mid-minute; Redis expires buckets by its own clock
WINDOWS = (300, 1800, 3600, 86_400, 604_800)
OFFSETS = itertools.count()


@pytest.fixture
async def store(services: tuple[str, str]) -> AsyncIterator[RedisStore]:
    redis = Redis.from_url(services[1])
    yield RedisStore(
        redis,
        Keys(f"w{uuid.uuid4().hex[:8]}"),
        minute_ttl_s=26 * 3600,
        hour_ttl_s=15 * 86400,
        clock=lambda: NOW,
    )
    await redis.aclose()


def events(rng: random.Random, n: int, start: float, end: float) -> list[PredictionEvent]:
    return [
        PredictionEvent(
            model_id="m",
            model_version="1",
            request_id=uuid.uuid4().hex,
            ts=rng.uniform(start, end),
            positive=rng.random() < 0.6,
            error=rng.random() < 0.02,
            latency_ms=rng.lognormvariate(3, 0.5),
            groups={"sex": rng.choice("FM")},
        )
        for _ in range(n)
    ]


async def write(store: RedisStore, batch: list[PredictionEvent]) -> None:
    await store.apply_predictions("predictions", [Located(e, 0, next(OFFSETS)) for e in batch])


def readers(store: RedisStore, mono: list[float]) -> tuple[WindowReader, WindowReader]:
    """A reader with the production caches on the monotonic clock `mono[0]`, and one that re-reads
    every bucket on every read (the exact answer to compare it with)."""
    return (
        WindowReader(store.redis, store.keys, windows_s=WINDOWS, clock=lambda: mono[0]),
        WindowReader(store.redis, store.keys, windows_s=WINDOWS, closed_refresh_s=0),
    )


async def snapshot(reader: WindowReader, now: float) -> dict[tuple[int, int], dict[str, int]]:
    windows = (await reader.read([("m", "1")], now))[("m", "1")]
    shots = {(w, 0): dict(+windows.counters(w)) for w in WINDOWS}
    shots[(604_800, 604_800)] = dict(+windows.counters(604_800, shift_s=604_800))
    shots[(0, 1)] = dict(+windows.reference_counters())
    return shots


async def test_cached_sums_equal_a_full_read_and_catch_up_when_the_minute_turns(store: RedisStore) -> None:
    rng = random.Random(7)
    await write(store, events(rng, 3000, NOW - 15 * 86_400, NOW))
    await write(store, events(rng, 2000, NOW - 3600, NOW))
    mono = [0.0]
    cached, uncached = readers(store, mono)
    assert await snapshot(cached, NOW) == await snapshot(uncached, NOW)

    mono[0] = 600.0  # no longer young: the caches live until the minute or hour turns, or 60 s
    assert await snapshot(cached, NOW) == await snapshot(uncached, NOW)
    await write(store, events(rng, 50, NOW, NOW + 1))  # the current minute: read every tick
    await write(store, events(rng, 40, NOW - 600, NOW - 300))  # 5 to 10 minutes late
    late = await snapshot(cached, NOW)
    exact = await snapshot(uncached, NOW)
    assert late[(300, 0)] == exact[(300, 0)]  # nothing landed in the 5 min window's older minutes
    assert late[(1800, 0)]["n"] == exact[(1800, 0)]["n"] - 40  # not yet seen by the 30 min window

    turned = NOW + 60 - NOW % 60  # the next minute: the sums are shifted, not re-read
    mono[0] = 601.0
    shifted, exact = await snapshot(cached, turned), await snapshot(uncached, turned)
    for window in ((300, 0), (1800, 0), (3600, 0)):
        assert 0 <= exact[window].get("n", 0) - shifted[window].get("n", 0) <= 40
    mono[0] = 661.0  # due: re-read in full, the late events are in
    assert await snapshot(cached, turned) == await snapshot(uncached, turned)


async def test_minute_sums_shifted_when_the_minute_turns_equal_a_full_read(store: RedisStore) -> None:
    rng = random.Random(5)
    await write(store, events(rng, 3000, NOW - 7200, NOW + 600))
    mono = [400.0]
    cached, uncached = readers(store, mono)
    await snapshot(cached, NOW)
    mono[0] = 800.0  # past its youth and due: read in full
    assert await snapshot(cached, NOW) == await snapshot(uncached, NOW)
    for minutes in range(1, 4):  # not due; the minute turns three times: shifted each time
        mono[0] += 1
        later = NOW + 60 * minutes
        assert await snapshot(cached, later) == await snapshot(uncached, later)


async def test_many_pairs_are_read_in_bounded_pipelines(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(3)
    for model in ("a", "b", "c"):
        batch = events(rng, 300, NOW - 3 * 86_400, NOW)
        await store.apply_predictions(
            "predictions",
            [Located(msgspec.structs.replace(e, model_id=model), 0, next(OFFSETS)) for e in batch],
        )
    pairs = [("a", "1"), ("b", "1"), ("c", "1")]
    whole = await readers(store, [0.0])[1].read(pairs, NOW)
    monkeypatch.setattr(windows_module, "MAX_PIPELINE_COMMANDS", 50)  # below one pair's cold read
    chunked = await readers(store, [0.0])[1].read(pairs, NOW)
    for pair in pairs:
        assert chunked[pair].counters(86_400) == whole[pair].counters(86_400)
        assert chunked[pair].counters(1800) == whole[pair].counters(1800)
        assert chunked[pair].counters(86_400)["n"] > 0


async def test_sums_shifted_when_the_hour_turns_equal_a_full_read(store: RedisStore) -> None:
    rng = random.Random(11)
    await write(store, events(rng, 4000, NOW - 15 * 86_400, NOW + 3600))
    mono = [0.0]
    cached, uncached = readers(store, mono)
    await snapshot(cached, NOW)
    mono[0] = 400.0  # past its youth and due: read in full
    assert await snapshot(cached, NOW) == await snapshot(uncached, NOW)
    mono[0] = 401.0  # not due; the hour turns: every range is shifted by one hour
    later = NOW + 3600
    assert await snapshot(cached, later) == await snapshot(uncached, later)
