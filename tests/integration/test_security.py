"""Security and data incidents from access logs and the model registry, on the real Redis and broker."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.aggregates.predictions import Located
from monitor.evaluator import TickReport
from monitor.events import AccessEvent, RegistryEvent
from monitor.store.keys import Keys
from monitor.store.redis import RedisStore
from tests.integration.conftest import World as BaseWorld
from tests.integration.conftest import open_world

pytestmark = pytest.mark.integration

MINUTE, HOUR, DAY = 60, 3600, 86_400
NOW = time.time() // MINUTE * MINUTE
DATASET = "s3://datasets/credit/train-2026-10"
SHA = {name: (name * 64)[:64] for name in "abcdef"}


class World(BaseWorld):
    """The shared world, plus a fresh access-policy store and a one-off tick at a given time."""

    def fresh(self) -> tuple[Keys, RedisStore]:
        keys = Keys(f"sec{uuid.uuid4().hex[:8]}")
        store = self.store(keys)
        store.configure(self.rules.ingest_rules())
        return keys, store

    async def tick(self, keys: Keys, at: float) -> TickReport:
        return await self.evaluator(keys, lambda: at).tick()


@pytest.fixture(scope="module")
async def world(services: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """This module's World in place of the shared fixture's."""
    async with open_world(services, tmp_path_factory.mktemp("evidence"), World) as world:
        yield world


def access(
    ts: float,
    principal: str,
    action: str,
    resource_type: str,
    *,
    model: str = "credit-scoring",
    resource: str = DATASET,
    outcome: str = "allowed",
    ip: str = "10.0.0.5",
    size: int | None = None,
    key: str | None = None,
) -> AccessEvent:
    return AccessEvent(
        ts=ts,
        principal=principal,
        action=action,
        resource_type=resource_type,  # type: ignore[arg-type]
        resource=resource,
        outcome=outcome,
        model_id=model,
        source_ip=ip,  # type: ignore[arg-type]
        auth_method="sso",
        bytes=size,
        api_key_id=key,
    )


def business_hours(day_offset: int, hour: int = 10) -> float:
    """A weekday at `hour`:00 UTC, `day_offset` days (or more, to skip a weekend) before NOW."""
    ts = NOW - day_offset * DAY
    day = datetime.fromtimestamp(ts, UTC)
    while day.weekday() >= 5:
        ts -= DAY
        day = datetime.fromtimestamp(ts, UTC)
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC).timestamp()


OFFSETS = iter(range(10**9))  # one growing offset sequence: every write is a new part of the topic


async def write(store: RedisStore, events: list[Any], topic: str = "access-logs") -> None:
    located = [Located(e, 0, next(OFFSETS)) for e in sorted(events, key=lambda e: e.epoch_s)]
    apply = store.apply_registry if topic == "model-registry" else store.apply_access
    for chunk in range(0, len(located), 5000):
        await apply(topic, located[chunk : chunk + 5000])


def only(report: TickReport) -> tuple[str, str, int, str | None]:
    assert len(report.opened) == 1, [(i.rule, i.group, i.summary) for i in report.opened]
    incident = report.opened[0]
    return incident.rule, incident.severity, incident.level, incident.group


async def test_unauthorized_weights_download_pauses_and_revokes(world: World) -> None:
    keys, store = world.fresh()
    await write(
        store,
        [
            access(
                NOW - 300,
                "intern-7",
                "download",
                "model_weights",
                resource="s3://models/credit/2.3/weights.bin",
            )
        ],
    )
    report = await world.tick(keys, NOW)
    assert only(report) == ("unauthorized-access", "CRITICAL", 4, "intern-7")
    [message] = [
        m for m in await world.bus.control("credit-scoring") if report.opened[0].id in m["incident_ids"]
    ]
    assert (message["level"], message["mode"], message["revoke_principals"]) == (4, "paused", ["intern-7"])
    evidence = json.loads((Path(report.opened[0].evidence_ref or "") / "access_events.json").read_text())
    assert [e["principal"] for e in evidence["events"]] == ["intern-7"]
    [(where, (low, high))] = evidence["kafka_offsets"].items()
    assert where == "access-logs:0" and low == high


async def test_training_data_read_at_three_am(world: World) -> None:
    keys, store = world.fresh()
    night = datetime.fromtimestamp(NOW - DAY, UTC).replace(hour=3, minute=10, second=0).timestamp()
    await write(store, [access(night, "ml-alice", "read", "training_data", size=10_000_000)])
    assert only(await world.tick(keys, night + 20 * MINUTE)) == (
        "training-data-off-hours",
        "HIGH",
        1,
        "ml-alice",
    )


def etl_history(days: int = 8, daily_bytes: int = 100_000_000) -> list[AccessEvent]:
    return [
        access(NOW - d * DAY - 2 * HOUR, "svc-training-etl", "read", "training_data", size=daily_bytes)
        for d in range(1, days + 1)
    ]


async def test_a_principal_new_to_the_data(world: World) -> None:
    keys, store = world.fresh()
    await write(store, etl_history())
    await write(store, [access(NOW - 600, "svc-training-adhoc", "read", "training_data", size=5_000_000)])
    assert only(await world.tick(keys, NOW)) == (
        "training-data-new-principal",
        "HIGH",
        1,
        "svc-training-adhoc",
    )


async def test_training_data_volume_far_above_the_principals_own(world: World) -> None:
    keys, store = world.fresh()
    await write(store, etl_history())
    await write(
        store,
        [
            access(NOW - 1800 + i, "svc-training-etl", "download", "training_data", size=500_000_000)
            for i in range(10)
        ],
    )
    report = await world.tick(keys, NOW)
    assert only(report) == ("training-data-volume", "CRITICAL", 4, "svc-training-etl")
    assert report.opened[0].revoke == ["svc-training-etl"]
    # the same principal at its usual volume raises nothing
    keys, store = world.fresh()
    await write(store, etl_history())
    await write(store, [access(NOW - 1800, "svc-training-etl", "read", "training_data", size=120_000_000)])
    assert (await world.tick(keys, NOW)).opened == []


async def test_tampered_weights_pause_and_recommend_the_last_approved_version(world: World) -> None:
    keys, store = world.fresh()
    model = "fraud-detector"

    def reg(ts: float, event: str, version: str, sha: str) -> RegistryEvent:
        return RegistryEvent(
            ts=ts, model_id=model, version=version, event=event, sha256=sha, actor="release-bot"
        )  # type: ignore[arg-type]

    await write(
        store,
        [
            reg(NOW - 9 * DAY, "approved", "1.0", SHA["a"]),
            reg(NOW - 9 * DAY + 60, "deployed", "1.0", SHA["a"]),
            reg(NOW - 2 * DAY, "approved", "2.0", SHA["b"]),
            reg(NOW - 2 * DAY + 60, "deployed", "2.0", SHA["b"]),
        ],
        topic="model-registry",
    )
    assert (await world.tick(keys, NOW)).opened == []  # approved deployments of new versions are fine
    await write(store, [reg(NOW - 120, "artifact_written", "2.0", SHA["c"])], topic="model-registry")
    report = await world.tick(keys, NOW)
    rule, severity, level, _ = only(report)
    assert (rule, severity, level) == ("weights-tampered", "CRITICAL", 4)
    incident = report.opened[0]
    assert incident.rollback_to == "1.0"
    assert (
        incident.observation["expected_sha256"] == [SHA["b"]] and incident.observation["sha256"] == SHA["c"]
    )
    messages = [m for m in await world.bus.control(model) if incident.id in m["incident_ids"]]
    assert [(m["level"], m["rollback_to"]) for m in messages] == [(4, "1.0")]
    integrity = json.loads((Path(incident.evidence_ref or "") / "integrity.json").read_text())
    assert integrity["observed_sha256"] == SHA["c"] and integrity["expected_sha256"] == [SHA["b"]]
    # security incidents never de-escalate on their own, even a day later with nothing new
    later = await world.tick(keys, NOW + DAY + HOUR)
    assert later.resolved == [] and later.levels[model] == 4


async def test_a_burst_of_denied_attempts(world: World) -> None:
    keys, store = world.fresh()
    await write(
        store,
        [access(NOW - 200 + i * 5, "ml-dave", "read", "training_data", outcome="denied") for i in range(25)],
    )
    assert only(await world.tick(keys, NOW)) == ("denied-burst", "HIGH", 1, "ml-dave")


async def test_a_login_from_a_new_source_then_a_privileged_action(world: World) -> None:
    keys, store = world.fresh()
    history = [access(business_hours(d), "ml-erin", "login", "endpoint", ip="10.1.1.7") for d in range(1, 10)]
    await write(store, history)
    await write(
        store,
        [
            access(NOW - 900, "ml-erin", "login", "endpoint", ip="203.0.113.66"),
            access(
                NOW - 600, "ml-erin", "write", "model_weights", resource="s3://models/credit/2.3/weights.bin"
            ),
        ],
    )
    report = await world.tick(keys, NOW)
    assert only(report) == ("new-source-privileged", "CRITICAL", 4, "ml-erin")
    assert report.opened[0].revoke == ["ml-erin"]


async def test_an_api_key_querying_like_an_extraction_attack(world: World) -> None:
    keys, store = world.fresh()
    steady = [
        access(NOW - h * HOUR - 600 + i, "svc-gateway-1", "query", "endpoint", key="key-123")
        for h in range(25, 24 * 8, 3)
        for i in range(100)
    ]
    burst = [
        access(NOW - 3000 + i * 0.15, "svc-gateway-1", "query", "endpoint", key="key-123")
        for i in range(20_000)
    ]
    await write(store, steady + burst)
    report = await world.tick(keys, NOW)
    assert only(report) == ("model-extraction", "HIGH", 2, "key-123")
    assert report.opened[0].revoke == ["key-123"]


async def test_a_new_api_keys_first_hour_of_steady_queries_is_no_extraction(world: World) -> None:
    # A new gateway key with no history sends 6,000 queries in its first hour, evenly: no "usual" to
    # be 20 times of (the soak benchmark opened model-extraction on every new key before this).
    keys, store = world.fresh()
    first_hour = [
        access(NOW - 3600 + i * 0.6, "svc-gateway-2", "query", "endpoint", key="key-new") for i in range(6000)
    ]
    await write(store, first_hour)
    report = await world.tick(keys, NOW)
    assert report.opened == []


async def test_a_normal_week_of_thirty_principals_raises_nothing(world: World) -> None:
    rng = random.Random(30)
    keys, store = world.fresh()
    engineers = [f"ml-eng-{i}" for i in range(12)]
    jobs = [f"svc-training-job-{i}" for i in range(6)]
    gateways = [f"svc-gateway-{i}" for i in range(6)]
    others = ["svc-deployer", *[f"role:security-analyst-{i}" for i in range(5)]]
    assert len(set(engineers + jobs + gateways + others)) == 30
    ips = {
        p: [f"10.2.{i}.{j}" for j in range(rng.randint(1, 2))]
        for i, p in enumerate(engineers + jobs + gateways + others)
    }
    datasets = {p: rng.choice([DATASET, "s3://datasets/credit/holdout"]) for p in engineers + jobs}
    events: list[AccessEvent] = []
    for d in range(1, 10):
        for p in engineers:
            day = business_hours(d, hour=9)
            events.append(access(day, p, "login", "endpoint", ip=rng.choice(ips[p])))
            for _ in range(rng.randint(2, 6)):
                events.append(
                    access(
                        day + rng.uniform(600, 8 * HOUR),
                        p,
                        "read",
                        "training_data",
                        resource=datasets[p],
                        size=rng.randint(10**6, 10**8),
                    )
                )
        for p in jobs:  # nightly jobs: exempt from the off-hours rule by their grant
            events.append(
                access(
                    NOW - d * DAY - rng.uniform(0, 3 * HOUR),
                    p,
                    "read",
                    "training_data",
                    resource=datasets[p],
                    size=rng.randint(10**8, 2 * 10**8),
                )
            )
        for p in gateways:
            for h in range(0, 24, 2):
                events.extend(
                    access(NOW - d * DAY + h * HOUR + i, p, "query", "endpoint", key=f"key-{p}")
                    for i in range(rng.randint(40, 60))
                )
        for p in others[1:]:
            events.append(
                access(
                    business_hours(d, hour=11),
                    p,
                    "read",
                    "model_weights",
                    resource="s3://models/credit/2.3/weights.bin",
                )
            )
    await write(store, events)
    approvals = [
        RegistryEvent(
            ts=NOW - d * DAY,
            model_id="credit-scoring",
            version=f"2.{d}",
            event=kind,
            sha256=SHA["abcdef"[d % 6]],
            actor="svc-deployer",
        )  # type: ignore[arg-type]
        for d in range(1, 8)
        for kind in ("approved", "deployed")
    ]
    await write(store, approvals, topic="model-registry")
    for at in (NOW - 6 * DAY, NOW - 4 * DAY, NOW - 2 * DAY, NOW - HOUR, NOW):
        report = await world.tick(keys, at)
        assert report.opened == [], [(i.rule, i.group, i.summary) for i in report.opened]
