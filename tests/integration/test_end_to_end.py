"""From predictions on Kafka to a control message on Kafka, through a real `monitor run` worker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from monitor.settings import Settings
from monitor.store.keys import Keys
from monitor.topics import ensure_topics
from tests.conftest import WorkerProcess, unique_settings

pytestmark = pytest.mark.integration
TOKEN = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
async def running(
    services: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Settings, WorkerProcess]]:
    settings = unique_settings(*services, api_token=TOKEN, evidence_dir=tmp_path_factory.mktemp("evidence"))
    await ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path_factory.mktemp("e2e") / "worker.log")
    worker.start()
    try:
        await worker.wait_ready()
        yield settings, worker
    finally:
        worker.stop()


async def first_message(
    bootstrap: str, topic: str, timeout_s: float
) -> tuple[bytes, dict[str, object], float]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    return record.key, orjson.loads(record.value), time.time()
        raise AssertionError(f"nothing on {topic} within {timeout_s}s")
    finally:
        await consumer.stop()


async def test_an_error_burst_pauses_the_model_within_seconds(
    running: tuple[Settings, WorkerProcess],
) -> None:
    settings, worker = running
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    now = time.time()
    events = [
        {
            "model_id": "loan-approval",
            "model_version": "3.1.0",
            "request_id": f"r{i}",
            "ts": now - 30 + i * 0.03,
            "latency_ms": 35.0,
            "positive": i % 3 != 0,
            **({"error": "upstream_timeout"} if i % 10 < 3 else {}),
        }
        for i in range(1000)
    ]
    try:
        # The ten messages go out together, to one partition (one record batch, one fetch), so the
        # worker takes the burst in one batch: a tick between two batches would open the incident
        # on part of it (spread over partitions, they arrived as 200 + 800 now and then).
        for start in range(0, len(events), 100):
            await producer.send(
                settings.topics.predictions, orjson.dumps(events[start : start + 100]), partition=0
            )
        await producer.flush()
        sent = time.time()
    finally:
        await producer.stop()

    key, control, seen = await first_message(settings.kafka_bootstrap, settings.topics.control, 30)
    assert key == b"loan-approval"
    assert control["level"] == 4 and control["mode"] == "paused" and control["seq"] == 1
    assert "error-rate CRITICAL" in str(control["reason"])
    assert seen - sent < 10, "detection took too long"
    _, incident, _ = await first_message(settings.kafka_bootstrap, settings.topics.incidents, 10)
    assert incident["event"] == "opened" and incident["rule"] == "error-rate"
    assert incident["id"] in control["incident_ids"]  # type: ignore[operator]
    observation = incident["observation"]
    assert (
        isinstance(observation, dict)
        and observation["samples"] == 1000
        and observation["value"] == pytest.approx(0.3)
    )
    assert await worker.metric("aimon_escalation_level", model_id="loan-approval") == 4
    assert await worker.metric("aimon_incidents_open", category="availability", severity="CRITICAL") == 1
    folder = Path(str(incident["evidence_ref"]))
    assert {p.name for p in folder.iterdir()} >= {
        "incident.json",
        "rule.json",
        "window.json",
        "model.json",
        "recent_events.json",
        "offsets.json",
        "notification.txt",
        "manifest.json",
    }
    assert len(orjson.loads((folder / "recent_events.json").read_bytes())) == 200
    last_offsets = orjson.loads((folder / "offsets.json").read_bytes()).values()
    assert sum(offset + 1 for offset in last_offsets) == 10  # all 10 messages (arrays of 100) applied
    assert "error-rate" in (folder / "notification.txt").read_text()
    print("\ncontrol message:", orjson.dumps(control, option=orjson.OPT_INDENT_2).decode())
    print(
        "incident:",
        orjson.dumps(
            {k: incident[k] for k in ("event", "id", "rule", "severity", "status", "observation")},
            option=orjson.OPT_INDENT_2,
        ).decode(),
    )
    await asyncio.sleep(0)


async def control_messages(settings: Settings, count: int, timeout_s: float = 20) -> list[dict[str, object]]:
    consumer = AIOKafkaConsumer(
        settings.topics.control,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(found) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(orjson.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return sorted(found, key=lambda m: m["seq"])  # type: ignore[arg-type,return-value]


def cli(settings: Settings, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env()}
    env.pop("MONITOR_API_TOKEN", None)
    if token:
        env["MONITOR_API_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_incident_command_through_the_api_and_cli(running: tuple[Settings, WorkerProcess]) -> None:
    settings, worker = running
    base = worker.base
    listed = json.loads(cli(settings, "incidents", "list", "--json").stdout)
    [incident] = [i for i in listed if i["model_id"] == "loan-approval"]
    path = f"/incidents/{incident['id']}/acknowledge"
    body = {"by": "dana", "why": "looking into the upstream timeouts"}
    async with aiohttp.ClientSession() as http:

        async def post(p: str, payload: object, token: str | None) -> tuple[int, dict[str, object]]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with http.post(base + p, json=payload, headers=headers) as resp:
                return resp.status, await resp.json()

        assert (await post(path, body, None))[0] == 401
        assert (await post(path, body, "wrong"))[0] == 401  # an unknown token: not authenticated
        assert (await post(path, {"by": "dana"}, TOKEN))[0] == 400
        assert (await post(path, {**body, "extra": 1}, TOKEN))[0] == 400
        assert (await post("/incidents/INC-nope/acknowledge", body, TOKEN))[0] == 404
        status, reply = await post(path, body, TOKEN)
        assert status == 200 and reply["incident"]["status"] == "acknowledged"  # type: ignore[index]
        status, reply = await post(path, body, TOKEN)
        assert status == 409 and "acknowledged" in str(reply["error"])

    # the CLI resolves it; the model goes back to level 0 and stays there (no reopening from the
    # same window's data), then a manual override raises it and a release lowers it again
    done = cli(settings, "incidents", "resolve", incident["id"], "--by", "dana", "--why", "upstream fixed")
    assert done.returncode == 0, done.stderr
    escalate = cli(
        settings, "models", "escalate", "loan-approval", "--level", "3", "--by", "dana", "--why", "audit week"
    )
    assert escalate.returncode == 0, escalate.stderr
    release = cli(settings, "models", "release", "loan-approval", "--by", "dana", "--why", "audit over")
    assert release.returncode == 0, release.stderr
    messages = await control_messages(settings, 4)
    assert [(m["seq"], m["level"]) for m in messages] == [(1, 4), (2, 0), (3, 3), (4, 0)]
    assert messages[2]["reason"] == "level 3 (near-total oversight): manual override"
    shown = json.loads(cli(settings, "incidents", "show", incident["id"], "--json").stdout)
    assert [e["what"] for e in shown["timeline"]] == ["opened", "acknowledged", "resolved"]
    # The deprecated single token is an admin principal named `token`: the timeline names the token's
    # principal, and the audit log keeps the self-declared `--by` only as a claim beside it.
    assert shown["timeline"][2]["by"] == "human:token" and shown["timeline"][2]["why"] == "upstream fixed"
    assert (
        cli(
            settings, "incidents", "resolve", incident["id"], "--by", "dana", "--why", "x", token=None
        ).returncode
        == 1
    )

    verify = cli(settings, "audit", "verify")
    # 6: acknowledge, acknowledge again and its refusal (409), resolve, escalate, release; every one
    # is in Redis and on the audit topic (the worker's anchor) before the reply.
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"6 entries (checked against 6 records on topic {settings.topics.audit}" in verify.stdout
    redis = Redis.from_url(settings.redis_url)
    try:
        key = Keys(settings.key_prefix).audit()
        newest = await redis.rpop(key)  # the newest entry removed: the anchor still has it
        removed = cli(settings, "audit", "verify")
        assert removed.returncode == 1, removed.stdout
        assert removed.stderr.startswith(
            "audit log TAMPERED: 1 entry missing from Redis, last at seq 5 "
            "(release loan-approval by human:token"
        ), removed.stderr
        await redis.rpush(key, newest)  # type: ignore[arg-type]
        entry = orjson.loads(await redis.lindex(key, 1))
        entry["why"] = "nothing to see here"
        await redis.lset(key, 1, orjson.dumps(entry))
    finally:
        await redis.aclose()
    tampered = cli(settings, "audit", "verify")
    assert tampered.returncode == 1 and "entry 1 was changed" in tampered.stderr

    assert cli(settings, "evidence", "verify", incident["id"]).returncode == 0
    window = Path(str(shown["evidence_ref"])) / "window.json"
    window.write_text(window.read_text().replace("300", "301"))
    broken = cli(settings, "evidence", "verify", incident["id"])
    assert broken.returncode == 1 and "window.json: changed" in broken.stderr
    assert cli(settings, "evidence", "verify", "../../etc").returncode == 2
