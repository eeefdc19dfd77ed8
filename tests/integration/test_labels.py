"""The label join on the real Redis: late labels, early labels, duplicates and replays."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from monitor.aggregates.joins import request_digest
from monitor.aggregates.predictions import Located, group_field
from monitor.events import LabelEvent, PredictionEvent
from monitor.store.keys import HOUR, MINUTE, Keys
from monitor.store.redis import RedisStore

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(services: tuple[str, str]) -> AsyncIterator[RedisStore]:
    redis = Redis.from_url(services[1])
    yield RedisStore(redis, Keys(f"t{uuid.uuid4().hex[:8]}"), minute_ttl_s=26 * 3600, hour_ttl_s=15 * 86400)
    await redis.aclose()


async def counters(store: RedisStore, version: str, resolution: str) -> Counter[str]:
    pattern = store.keys.bucket("credit", version, resolution, 0)[:-1] + "*"
    total: Counter[str] = Counter()
    async for key in store.redis.scan_iter(match=pattern):
        for name, value in (await store.redis.hgetall(key)).items():
            total[name.decode()] += int(value)
    return total


async def test_labels_join_their_predictions_whatever_the_order(store: RedisStore) -> None:
    rng = random.Random(3)
    now = time.time()
    predictions, labels = [], []
    for i in range(600):
        predicted = rng.random() < 0.5
        truth = predicted if rng.random() < 0.8 else not predicted
        sex = rng.choice("FM")
        predictions.append(
            PredictionEvent(
                model_id="credit",
                model_version="1",
                request_id=f"r{i}",
                ts=now - rng.uniform(0, 20 * 3600),
                prediction=int(predicted),
                positive=predicted,
                groups={"sex": sex},
            )
        )
        if i % 3:  # two in three get a label, the truth as 1.0/0.0 to check canonical matching
            labels.append(
                LabelEvent(request_id=f"r{i}", model_id="credit", ts=now, label=float(truth), positive=truth)
            )
    expected: Counter[str] = Counter()
    by_id = {p.request_id: p for p in predictions}
    for label in labels:
        p = by_id[label.request_id]
        correct = int(p.prediction == int(label.label))  # type: ignore[arg-type]
        fn = int(bool(label.positive) and not p.positive)
        for prefix in ("", group_field("sex", str(p.groups["sex"]), "")):
            expected[prefix + "lab"] += 1
            expected[prefix + "cor"] += correct
            expected[prefix + "apos"] += int(bool(label.positive))
            expected[prefix + "fn"] += fn

    # half of the labels arrive before their predictions, half after
    early, late = labels[: len(labels) // 2], labels[len(labels) // 2 :]
    r1 = await store.apply_labels("labels", [Located(e, 0, i) for i, e in enumerate(early)])
    assert r1.labels_waiting == len(early) and r1.labels_matched == 0
    r2 = await store.apply_predictions("predictions", [Located(e, 0, i) for i, e in enumerate(predictions)])
    assert r2.labels_matched == len(early)
    r3 = await store.apply_labels("labels", [Located(e, 1, i) for i, e in enumerate(late)])
    assert r3.labels_matched == len(late) and r3.labels_waiting == 0

    for resolution in (MINUTE, HOUR):
        stored = await counters(store, "1", resolution)
        assert {k: v for k, v in stored.items() if k.endswith(("lab", "cor", "apos", "fn"))} == {
            k: v for k, v in expected.items() if v
        }
        assert stored["n"] == len(predictions)

    # a replayed label batch, and a second label for an already labelled request, count nothing
    replay = await store.apply_labels("labels", [Located(e, 1, i) for i, e in enumerate(late)])
    assert replay.applied_events == 0 and replay.skipped_events == len(late)
    duplicate = LabelEvent(request_id=late[0].request_id, model_id="credit", ts=now, label=0)
    await store.apply_labels("labels", [Located(duplicate, 1, len(late))])
    assert (await counters(store, "1", MINUTE))["lab"] == expected["lab"]


async def test_a_waiting_label_is_given_up_after_the_join_ttl(store: RedisStore) -> None:
    clock = [time.time()]
    store.clock = lambda: clock[0]
    orphan = LabelEvent(request_id="never", model_id="credit", ts=clock[0], label=1)
    await store.apply_labels("labels", [Located(orphan, 0, 0)])
    assert await store.redis.hexists(store.keys.waiting_labels("credit"), request_digest("never")[0])
    clock[0] += store.label_join_ttl_s + 1
    other = LabelEvent(request_id="other", model_id="credit", ts=clock[0], label=1)
    await store.apply_labels("labels", [Located(other, 0, 1)])
    assert not await store.redis.hexists(store.keys.waiting_labels("credit"), request_digest("never")[0])


async def test_a_label_finds_its_prediction_whatever_the_model_id_spells(store: RedisStore) -> None:
    # The scripts build the join and bucket keys from keys.py's patterns: a '%' or ':' in the
    # model id must land in the same keys Python reads.
    now = time.time()
    model = "credit%d:50%"
    prediction = PredictionEvent(
        model_id=model, model_version="v%s", request_id="r1", ts=now - 120, prediction=1, positive=True
    )
    label = LabelEvent(request_id="r1", model_id=model, ts=now, label=1, positive=True)
    await store.apply_predictions("predictions", [Located(prediction, 0, 0)])
    matched = await store.apply_labels("labels", [Located(label, 0, 0)])
    assert matched.labels_matched == 1 and matched.labels_waiting == 0
    minute = int(prediction.epoch_s) // 60 * 60
    for resolution, start in ((MINUTE, minute), (HOUR, minute - minute % 3600)):
        stored = await store.redis.hgetall(store.keys.bucket(model, "v%s", resolution, start))
        assert {k.decode(): int(v) for k, v in stored.items() if k in (b"lab", b"cor", b"apos")} == {
            "lab": 1,
            "cor": 1,
            "apos": 1,
        }


async def test_a_long_prediction_is_joined_by_its_digest_and_pending_records_are_small(
    store: RedisStore,
) -> None:
    now = time.time()
    long_text = "approve with conditions: " + "x" * 200  # past 16 bytes: kept as a digest
    predictions = [
        PredictionEvent(
            model_id="credit",
            model_version="1",
            request_id=str(uuid.uuid4()),
            ts=now - 60,
            prediction=long_text if i % 2 else "deny",
            positive=bool(i % 2),
            groups={"sex": "FM"[i % 2], "age_band": str(i % 6)},
        )
        for i in range(400)
    ]
    await store.apply_predictions("predictions", [Located(e, 0, i) for i, e in enumerate(predictions)])
    pattern = store.keys.model("credit") + ":join:*"
    joins = [key async for key in store.redis.scan_iter(match=pattern)]
    pending = sum([await store.redis.hlen(key) for key in joins])
    assert pending == 400
    for key in joins:
        assert await store.redis.object("encoding", key) == b"listpack"
        for value in (await store.redis.hgetall(key)).values():
            assert len(value) <= 8 + 4 + 1 + 13  # shape id, minute, positive, prediction (or its digest)
    labels = [
        LabelEvent(
            model_id="credit", request_id=e.request_id, ts=now, label=e.prediction, positive=e.positive
        )
        for e in predictions
    ]
    result = await store.apply_labels("labels", [Located(e, 0, i) for i, e in enumerate(labels)])
    assert result.labels_matched == 400
    totals = await counters(store, "1", HOUR)
    assert totals["lab"] == totals["cor"] == 400
    assert totals[group_field("age_band", "3", "cor")] == sum(1 for i in range(400) if i % 6 == 3)
    assert sum([await store.redis.hlen(key) for key in joins]) == 0


async def test_the_kept_unfavourable_decisions_are_bounded_by_bytes(store: RedisStore) -> None:
    store.impact_sample_max_bytes = 20_000
    now = time.time()
    events = [
        PredictionEvent(
            model_id="credit",
            model_version="1",
            request_id=f"request-{i:06d}",
            subject_id=f"subject-{i}",
            ts=now - 600 + i * 0.1,
            prediction=0,
            positive=False,
            groups={"sex": "F"},
        )
        for i in range(3000)
    ]
    for start in range(0, 3000, 500):
        batch = [Located(e, 0, start + i) for i, e in enumerate(events[start : start + 500])]
        await store.apply_predictions("predictions", batch)
    kept = await store.redis.zrange(store.keys.unfavourable("credit"), 0, -1)
    size = sum(len(member) for member in kept)
    assert 19_000 < size <= 20_000
    assert int(await store.redis.get(store.keys.unfavourable_bytes("credit"))) == size
    assert b"request-002999" in kept[-1]  # the newest are the ones kept
