"""The monotonic totals on the real Redis: every bucket counter, labels included, exactly once."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from monitor.aggregates.predictions import LATENCY_SUM_US, Located, split_totals
from monitor.events import LabelEvent, PredictionEvent
from monitor.store.keys import HOUR, MINUTE, Keys
from monitor.store.redis import RedisStore

pytestmark = pytest.mark.integration

MODEL = "credit"
VERSIONS = ("1.0", "canary|50%", "%7C|%25")  # the last two need escaping to round-trip


@pytest.fixture
async def redis(services: tuple[str, str]) -> AsyncIterator[Redis]:
    client = Redis.from_url(services[1])
    yield client
    await client.aclose()


def new_store(redis: Redis, *, minute_ttl_s: int = 26 * 3600, hour_ttl_s: int = 15 * 86400) -> RedisStore:
    return RedisStore(
        redis, Keys(f"t{uuid.uuid4().hex[:8]}"), minute_ttl_s=minute_ttl_s, hour_ttl_s=hour_ttl_s
    )


async def totals(store: RedisStore, tier: int | None = None) -> dict[str, Counter[str]]:
    """Per version, the on-time counters (every event), or with `tier` those counted again under
    that lateness tier (its "~<tier>|" prefix removed)."""
    split = split_totals(await store.redis.hgetall(store.keys.totals(MODEL)))
    head = f"~{tier}|"
    return {
        version: Counter(
            {
                (k[len(head) :] if tier else k): v
                for k, v in fields.items()
                if (k.startswith(head) if tier else not k.startswith("~"))
            }
        )
        for version, fields in split.items()
    }


async def bucket_sums(store: RedisStore, predictions: list[PredictionEvent]) -> dict[str, Counter[str]]:
    """Per version, the field-by-field sum of every minute bucket the predictions fell in."""
    minutes = {(p.model_version, int(p.epoch_s) // 60 * 60) for p in predictions}
    sums: dict[str, Counter[str]] = {}
    for version, start in sorted(minutes):
        raw = await store.redis.hgetall(store.keys.bucket(MODEL, version, MINUTE, start))
        assert raw, (version, start)
        sums.setdefault(version, Counter()).update({k.decode(): int(v) for k, v in raw.items()})
    return sums


def traffic(rng: random.Random, now: float, n: int) -> tuple[list[PredictionEvent], list[LabelEvent]]:
    predictions, labels = [], []
    for i in range(n):
        predicted = rng.random() < 0.6
        failed = rng.random() < 0.05
        predictions.append(
            PredictionEvent(
                model_id=MODEL,
                model_version=VERSIONS[i % 3],
                request_id=f"r{i}",
                ts=now - rng.uniform(0, 3 * 3600),
                prediction=int(predicted),
                positive=None if rng.random() < 0.1 else predicted,
                error="timeout" if failed else None,
                latency_ms=None if rng.random() < 0.2 else rng.uniform(1, 400),
                groups={"sex": rng.choice("FM"), "age|band": rng.choice(["<30", "30%+"])},
                flags=[rng.choice(["toxic", "pii|leak"])] if rng.random() < 0.1 else [],
                user_id=f"u{rng.randrange(50)}",
            )
        )
        if not failed and i % 3 != 2:  # errored predictions are never joined
            truth = predicted if rng.random() < 0.8 else not predicted
            labels.append(
                LabelEvent(request_id=f"r{i}", model_id=MODEL, ts=now, label=int(truth), positive=truth)
            )
    return predictions, labels


async def test_totals_are_the_sum_of_every_bucket_field_and_replays_change_none(redis: Redis) -> None:
    store = new_store(redis)
    now = time.time()
    predictions, labels = traffic(random.Random(13), now, 1500)
    early, late = labels[: len(labels) // 3], labels[len(labels) // 3 :]
    # Early labels wait and are matched by the prediction script; late ones by the label script.
    assert (
        await store.apply_labels("labels", [Located(e, 0, i) for i, e in enumerate(early)])
    ).labels_waiting
    located = [Located(e, i % 2, i) for i, e in enumerate(predictions)]
    first = await store.apply_predictions("predictions", located[:700])
    second = await store.apply_predictions("predictions", located[700:])
    assert first.labels_matched + second.labels_matched == len(early)
    late_located = [Located(e, 1, i) for i, e in enumerate(late)]
    assert (await store.apply_labels("labels", late_located)).labels_matched == len(late)

    stored = await totals(store)
    sums = await bucket_sums(store, predictions)
    assert set(stored) == set(VERSIONS) == set(sums)
    for version in VERSIONS:
        latus = stored[version].pop(LATENCY_SUM_US)
        assert stored[version] == sums[version], version
        want_us = sum(p.latency_ms or 0.0 for p in predictions if p.model_version == version) * 1000
        assert abs(latus - want_us) <= 2  # rounded once per batch
    # The counters the detectors need are all there, per group and flag too.
    fields = set(stored["canary|50%"])
    assert {"n", "err", "dec", "pos", "latn", "lab", "cor", "apos", "fn", "f|toxic", "f|pii%7Cleak"} <= fields
    assert {"g|sex|F|lab", "g|age%7Cband|30%25+|cor", "g|sex|M|dec"} <= fields
    assert sum(v["lab"] for v in stored.values()) == len(labels)

    # The hour buckets hold the same counts.
    hours = {(p.model_version, int(p.epoch_s) // 3600 * 3600) for p in predictions}
    by_hour: dict[str, Counter[str]] = {}
    for version, start in hours:
        raw = await redis.hgetall(store.keys.bucket(MODEL, version, HOUR, start))
        by_hour.setdefault(version, Counter()).update({k.decode(): int(v) for k, v in raw.items()})
    assert by_hour == sums

    # A replayed batch of predictions or labels, and a second label for a labelled request: nothing moves.
    before = await totals(store)
    replayed = await store.apply_predictions("predictions", located)
    assert replayed.applied_events == 0 and replayed.skipped_events == len(located)
    assert (await store.apply_labels("labels", late_located)).applied_events == 0
    again = LabelEvent(request_id=late[0].request_id, model_id=MODEL, ts=now, label=0)
    assert (await store.apply_labels("labels", [Located(again, 1, len(late))])).labels_matched == 0
    assert await totals(store) == before


async def test_a_label_after_its_buckets_expired_still_counts_in_the_totals(redis: Redis) -> None:
    # Short TTLs: the prediction's minute and hour buckets are past their lifetime when its label comes.
    store = new_store(redis, minute_ttl_s=600, hour_ttl_s=3600)
    now = time.time()
    version = "v|1%"
    prediction = PredictionEvent(
        model_id=MODEL,
        model_version=version,
        request_id="old",
        ts=now - 3 * 3600,
        prediction=0,
        positive=False,
        groups={"sex": "F"},
    )
    await store.apply_predictions("predictions", [Located(prediction, 0, 0)])
    assert (await totals(store))[version] == {"n": 1, "dec": 1, "g|sex|F|n": 1, "g|sex|F|dec": 1}

    store.clock = lambda: now + 100  # the label comes later, and pushes the totals' expiry on
    label = LabelEvent(request_id="old", model_id=MODEL, ts=now + 100, label=1, positive=True)
    assert (await store.apply_labels("labels", [Located(label, 0, 0)])).labels_matched == 1
    assert (await totals(store))[version] == {
        "n": 1,
        "dec": 1,
        "g|sex|F|n": 1,
        "g|sex|F|dec": 1,
        # labelled favourable, predicted unfavourable: wrong, and a false negative
        "lab": 1,
        "apos": 1,
        "fn": 1,
        "g|sex|F|lab": 1,
        "g|sex|F|apos": 1,
        "g|sex|F|fn": 1,
    }
    minute = int(prediction.epoch_s) // 60 * 60
    for resolution, start in ((MINUTE, minute), (HOUR, minute - minute % 3600)):
        bucket = await redis.hgetall(store.keys.bucket(MODEL, version, resolution, start))
        assert b"lab" not in bucket  # expired buckets are not re-created (nor counted into)
    assert await redis.expiretime(store.keys.totals(MODEL)) == int(now + 100) + 60 + 3600
    # Three hours late on arrival, the prediction and its label are also counted under tier 3
    # ((1 h, 24 h]): a rule watching a shorter window leaves them out.
    assert (await totals(store, tier=3))[version] == (await totals(store))[version]
    assert (await totals(store, tier=2)).get(version, Counter()) == Counter()
