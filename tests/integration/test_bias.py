"""Bias and discrimination incidents on the real Redis and broker: disparate impact with its impact,
false-negative-rate gaps, proxies, the notification, and no false accusations at scale."""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
import uuid
from pathlib import Path

import pytest

from monitor.aggregates.predictions import Located
from monitor.evaluator import Evaluator
from monitor.events import LabelEvent, PredictionEvent
from monitor.store.keys import Keys
from tests.integration.conftest import World

pytestmark = pytest.mark.integration

MINUTE, HOUR, DAY = 60, 3600, 86_400
# Bucket-aligned (minute 45 of an hour), so windows cut the generated traffic the same way on
# every run and the detection point of the seeded traffic is reproducible.
NOW = time.time() // HOUR * HOUR - 15 * MINUTE


def evaluator(world: World, keys: Keys, clock: list[float]) -> Evaluator:
    """An evaluator on `clock[0]` whose notifications name the incident commander to contact."""
    return world.evaluator(keys, lambda: clock[0], contact="Dana Reyes, incident commander, +1 555 0100")


def loan(
    model_id: str, i: int, ts: float, sex: str, approved: bool, rng: random.Random, zip3: str | None = None
) -> PredictionEvent:
    return PredictionEvent(
        model_id=model_id,
        model_version="2.3",
        request_id=f"{model_id}-{i}",
        ts=ts,
        prediction=int(approved),
        positive=approved,
        confidence=0.9,
        latency_ms=30.0,
        groups={
            "sex": sex,
            "age_band": rng.choice(["18-34", "35-54", "55+"]),
            "zip3": zip3 or rng.choice(["941", "100", "606"]),
        },
        subject_id=f"applicant-{rng.randrange(10**9)}",
    )


async def test_a_group_approval_drop_opens_one_incident_with_its_impact(world: World) -> None:
    """Approvals of sex=F fall from 60 % to 40 % at T; both groups send 200 decisions a minute."""
    rng = random.Random(4)
    keys = Keys(f"bias{uuid.uuid4().hex[:8]}")
    store, clock = world.store(keys), [0.0]
    store.clock = lambda: clock[0]  # ingest runs on the simulated clock: the events arrive on time
    ev = evaluator(world, keys, clock)
    model = "loan-approval"
    t_switch = NOW - 2 * HOUR  # 10 minutes of fair traffic, then the drop
    start = t_switch - 10 * MINUTE
    produced: list[PredictionEvent] = []
    after_switch_f = 0
    opened = None
    for minute in range(0, 120):
        minute_start = start + minute * MINUTE
        batch = []
        for sex in ("F", "M"):
            for _ in range(200):
                ts = minute_start + rng.uniform(0, MINUTE - 0.01)
                rate = 0.4 if (sex == "F" and ts >= t_switch) else 0.6
                batch.append(loan(model, len(produced) + len(batch), ts, sex, rng.random() < rate, rng))
        produced.extend(batch)
        after_switch_f += sum(1 for e in batch if e.groups["sex"] == "F" and e.epoch_s >= t_switch)
        await store.apply_predictions(
            "predictions", [Located(e, 0, len(produced) - len(batch) + j) for j, e in enumerate(batch)]
        )
        clock[0] = minute_start + MINUTE
        report = await ev.tick()
        assert all(i.category == "bias" and i.rule == "disparate-impact" for i in report.opened)
        if report.opened:
            opened = report.opened
            break
    assert opened is not None, "the disparity was never detected"
    # The bound: the detector of sex=F compares its unfavourable rate (60 % after T) with a boundary
    # of 1 − 0.8 × (a 99 % lower bound on M's approval rate over 30 minutes, ≈ 0.585): 0.532. At
    # ~0.0094 nats of evidence per decision it needs ~2,200 of F's decisions past T for its bar
    # (≈ 20.6 at a 90-day budget): ~11 minutes at 200 a minute; the bound is 4,000 (20 minutes).
    print(f"\ndetected after {after_switch_f} decisions of sex=F after T")
    assert 0 < after_switch_f <= 4000, after_switch_f
    [incident] = opened
    assert (incident.group, incident.severity, incident.level) == ("sex=F", "HIGH", 3)
    obs = incident.observation
    assert obs["value"] < 0.8 and obs["reference_group"] == "M" and obs["proxy"] is False
    low, high = obs["rate_interval"]  # the unfavourable rate since the change, anytime-valid
    assert low < obs["rate_since_change"] < high and low > 1 - 0.8 * obs["reference_rate"]
    assert obs["test"]["statistic"] >= obs["test"]["boundary"] * (1 - 1e-9)
    assert t_switch - 5 * MINUTE <= obs["change_at"] <= t_switch + 10 * MINUTE  # where it started

    # affected decisions and subjects, counted here from what was produced
    window_start, now = incident.scope["window_start_s"], incident.scope["window_end_s"]
    hit = [
        e
        for e in produced
        if e.groups["sex"] == "F" and e.positive is False and window_start <= e.epoch_s <= now
    ]
    assert incident.scope["affected_decisions"] == len(hit)
    assert incident.scope["affected_subjects"] == len({e.subject_id for e in hit})
    assert incident.scope["complete"] is True
    folder = Path(incident.evidence_ref or "")
    affected = json.loads((folder / "affected.json").read_text())
    assert sorted(affected["request_ids"]) == sorted(e.request_id for e in hit)
    assert affected["request_ids_beyond_bound"] == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"]
    assert incident.remediation[3] == "Revert to the previous model version"

    # the notification carries the real figures and nothing left unfilled
    text = (folder / "notification.txt").read_text()
    assert f"{len(hit):,} unfavourable decisions for sex=F" in text
    assert f"{obs['value']:.2f}" in text and incident.id in text and "Dana Reyes" in text
    assert "{" not in text and "[" not in text and "None" not in text
    assert "level 3" in text and "reviewed by a human" in text

    control = await world.bus.control(model)
    assert [(m["level"], m["mode"]) for m in control] == [(3, "human_review")]
    events = await world.bus.incidents(model)
    assert events[0]["summary"].startswith("potential discrimination")


async def test_fnr_gap_fires_with_enough_labels_and_not_on_thirty(world: World) -> None:
    # A 10-point gap against a 5-point threshold: the boundary is M's 99 % upper bound (≈ 0.11 at
    # 5,000 positives) + 0.05, so F's 0.20 is ~0.0056 nats per labelled positive: 5,000 hold the
    # detector's bar (≈ 22 at a 90-day budget); 30 never do.
    for per_group, fires in ((5000, True), (30, False)):
        rng = random.Random(per_group)
        keys = Keys(f"fnr{uuid.uuid4().hex[:8]}")
        store, clock = world.store(keys), [NOW]
        store.clock = lambda: NOW  # ingest on the test's clock: the labels are not a week late
        model = f"hiring-{per_group}"
        predictions, labels = [], []
        for sex, fnr in (("F", 0.20), ("M", 0.10)):
            for i in range(2 * per_group):
                qualified = i < per_group
                refused = (
                    (i < round(per_group * fnr)) if qualified else (i - per_group) >= round(per_group * 0.1)
                )
                rid = f"{model}-{sex}-{i}"
                ts = NOW - rng.uniform(60, 20 * HOUR)
                predictions.append(
                    PredictionEvent(
                        model_id=model,
                        model_version="1",
                        request_id=rid,
                        ts=ts,
                        prediction=int(not refused),
                        positive=not refused,
                        groups={"sex": sex, "age_band": "35-54", "zip3": "941"},
                        subject_id=rid,
                    )
                )
                labels.append(
                    LabelEvent(
                        request_id=rid, model_id=model, ts=ts + 3600, label=int(qualified), positive=qualified
                    )
                )
        for start in range(0, len(predictions), 2000):  # batches of a consumer's size
            part = predictions[start : start + 2000]
            await store.apply_predictions(
                "predictions", [Located(e, 0, start + i) for i, e in enumerate(part)]
            )
        for start in range(0, len(labels), 2000):
            part = labels[start : start + 2000]
            await store.apply_labels("labels", [Located(e, 0, start + i) for i, e in enumerate(part)])
        report = await evaluator(world, keys, clock).tick()
        found = [(i.rule, i.group) for i in report.opened]
        if fires:
            assert found == [("fnr-gap", "sex=F")]
            obs = report.opened[0].observation
            assert obs["value"] == pytest.approx(0.10) and obs["false_negative_rate"] == pytest.approx(0.20)
        else:
            assert found == []


async def test_a_proxy_attribute_is_called_possible_proxy_discrimination(world: World) -> None:
    rng = random.Random(9)
    keys = Keys(f"proxy{uuid.uuid4().hex[:8]}")
    store, clock = world.store(keys), [NOW]
    store.clock = lambda: clock[0]  # ingest on the test's clock: the events arrive on time
    model = "mortgage"
    events = []
    for i in range(3000):
        zip3 = ("941", "606")[i % 2]
        approved = rng.random() < (0.6 if zip3 == "941" else 0.36)
        events.append(
            loan(model, i, NOW - rng.uniform(1, 25 * MINUTE), rng.choice("FM"), approved, rng, zip3=zip3)
        )
    await store.apply_predictions("predictions", [Located(e, 0, i) for i, e in enumerate(events)])
    report = await evaluator(world, keys, clock).tick()
    assert [(i.rule, i.group) for i in report.opened] == [("disparate-impact", "zip3=606")]
    incident = report.opened[0]
    assert incident.summary.startswith(
        "possible proxy discrimination (via zip3, may stand in for race or ethnicity)"
    )
    text = (Path(incident.evidence_ref or "") / "notification.txt").read_text()
    assert "Possible proxy discrimination via zip3" in text


async def test_fifty_models_of_ten_fair_groups_over_a_day_accuse_nobody(world: World) -> None:
    """Fair but unequal groups (true ratios down to 0.85, near the 0.80 line): the detectors'
    budget, split over ticks, groups and models, keeps 500 groups watched all day from a trickle
    of false incidents. (Within a day: ingest runs on the test's clock, and buckets older than their
    TTL would expire on arrival.)"""
    rng = random.Random(50)
    keys = Keys(f"fair{uuid.uuid4().hex[:8]}")
    store, clock = world.store(keys), [0.0]
    store.clock = lambda: clock[0]  # each tick's traffic is ingested as it happens
    ev = evaluator(world, keys, clock)
    ticks = [NOW - 20 * HOUR, NOW - 10 * HOUR, NOW - 1]
    rates = {f"z{g}": 0.5 + 0.01 * g for g in range(10)}  # 0.50 … 0.59: every ratio ≥ 0.847
    offset = 0
    raw_significant = 0.0
    for tick in ticks:
        clock[0] = tick
        batch = []
        for m in range(50):
            for zip3, rate in rates.items():
                for _ in range(110):
                    batch.append(
                        loan(
                            f"fair-{m}",
                            offset + len(batch),
                            tick - rng.uniform(1, 13 * MINUTE),
                            rng.choice("FM"),
                            rng.random() < rate,
                            rng,
                            zip3=zip3,
                        )
                    )
        for chunk in range(0, len(batch), 10_000):
            part = batch[chunk : chunk + 10_000]
            await store.apply_predictions(
                "predictions", [Located(e, 0, offset + j) for j, e in enumerate(part)]
            )
            offset += len(part)
        clock[0] = tick
        report = await ev.tick()
        assert report.opened == [], [(i.model_id, i.group, i.observation["test"]) for i in report.opened]
        d = ev.detection.detectors
        watched = [
            i
            for i, q in enumerate(d.rows)
            if q.rule.id == "disparate-impact" and q.attribute == "zip3" and math.isfinite(d.p0(i))
        ]
        assert len(watched) >= 50 * 10  # every model's zip3 groups were watched, with a boundary
        raw_significant = max(raw_significant, max(float(d.bank.stat[i].max()) for i in watched))
    # for the record: the strongest evidence any fair group's detector held, against its bar
    print(f"\nlargest DIR statistic {raw_significant:.2f} of the {d.cap(watched[0]):.2f} needed")
