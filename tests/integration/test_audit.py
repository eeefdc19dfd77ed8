"""The audit trail on the real Redis and Kafka: appended through AuditLog and the real anchor producer,
tampered with raw Redis commands, and checked by `monitor audit verify` as an operator runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from pydantic import SecretStr
from redis.asyncio import Redis

from monitor.audit import AuditLog
from monitor.audit.anchor import KafkaAnchor, read_anchor
from monitor.audit.chain import legacy_hash
from monitor.dev.services import REDIS_PERSISTENCE
from monitor.settings import Settings
from monitor.store.keys import Keys
from monitor.topics import TopicConfigError, ensure_topics
from tests.conftest import free_port, unique_settings

pytestmark = pytest.mark.integration

SECRET = "integration-audit-secret-0123456789abcdef"
T0 = time.time()


@dataclass
class Trail:
    """One test's audit log: its settings (own topics, key prefix), Redis and the anchored log."""

    settings: Settings
    redis: Redis
    log: AuditLog
    anchor: KafkaAnchor

    @property
    def key(self) -> str:
        return Keys(self.settings.key_prefix).audit()

    async def append(self, n: int, start: int = 0) -> list[dict[str, Any]]:
        return [
            await self.log.append(
                at=time.time(),
                who="human:dana",
                action="acknowledge",
                target=f"INC-{i}",
                why=f"reason {i}",
                command=f"cmd-{i}",
            )
            for i in range(start, start + n)
        ]


def cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`monitor ARGS` in its own process, with the settings' environment."""
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        env={**os.environ, **settings.to_env(), **env},
        capture_output=True,
        text=True,
        timeout=90,
    )


async def verify(settings: Settings) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, settings, "audit", "verify")


@pytest.fixture
async def trail(services: tuple[str, str]) -> AsyncIterator[Trail]:
    settings = unique_settings(*services, audit_secret=SecretStr(SECRET))
    await ensure_topics(settings)
    redis = Redis.from_url(settings.redis_url)
    anchor = KafkaAnchor(settings.kafka_bootstrap, settings.topics.audit)
    log = AuditLog(redis, Keys(settings.key_prefix), secret=SECRET.encode(), anchor=anchor)
    yield Trail(settings, redis, log, anchor)
    await anchor.stop()
    await redis.aclose()


async def test_an_untampered_trail_is_intact_and_on_the_topic(trail: Trail) -> None:
    written = await trail.append(5)
    anchored = await read_anchor(trail.settings.kafka_bootstrap, trail.settings.topics.audit)
    assert anchored == written  # every entry, byte for byte, in order
    done = await verify(trail.settings)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        f"audit log intact: 5 entries (checked against 5 records on topic {trail.settings.topics.audit}; "
    )
    print(done.stdout.strip())
    machine = orjson.loads((await asyncio.to_thread(cli, trail.settings, "audit", "verify", "--json")).stdout)
    assert {k: machine[k] for k in ("ok", "verdict", "entries", "anchored", "seq", "problem")} == {
        "ok": True,
        "verdict": "intact",
        "entries": 5,
        "anchored": 5,
        "seq": None,
        "problem": None,
    }


async def _rpop(t: Trail) -> None:
    await t.redis.rpop(t.key)


async def _ltrim(t: Trail) -> None:
    await t.redis.ltrim(t.key, 2, -1)


async def _lset(t: Trail) -> None:
    entry = orjson.loads(await t.redis.lindex(t.key, 1))  # type: ignore[arg-type]
    entry["why"] = "nothing to see here"
    await t.redis.lset(t.key, 1, orjson.dumps(entry))


async def _linsert(t: Trail) -> None:
    real = orjson.loads(await t.redis.lindex(t.key, 2))  # type: ignore[arg-type]
    forged = {**real, "why": "approved by the board", "hash": "ab" * 32}
    await t.redis.linsert(t.key, "BEFORE", orjson.dumps(real), orjson.dumps(forged))


async def _forged_tail(t: Trail) -> None:
    head = orjson.loads(await t.redis.lindex(t.key, -1))  # type: ignore[arg-type]
    forged = {**head, "seq": 5, "prev": head["hash"], "why": "forged", "hash": "cd" * 32}
    await t.redis.rpush(t.key, orjson.dumps(forged))


async def _lrem(t: Trail) -> None:
    await t.redis.lrem(t.key, 1, await t.redis.lindex(t.key, 2))  # type: ignore[arg-type]


async def _del(t: Trail) -> None:
    await t.redis.delete(t.key)


TAMPERS: list[tuple[Callable[[Trail], Awaitable[None]], str]] = [
    (_rpop, "audit log TAMPERED: 1 entry missing from Redis, last at seq 4 (acknowledge INC-4 by human:dana"),
    (
        _ltrim,
        "audit log TAMPERED: the oldest 2 entries (seq 0..1) were deleted; the first: acknowledge INC-0",
    ),
    (_lset, "audit log TAMPERED: entry 1 was changed after it was written (why; it has a wrong HMAC)"),
    (_linsert, "audit log TAMPERED: a forged entry 2 was inserted before the real one (it has a wrong HMAC)"),
    (_forged_tail, "audit log TAMPERED: entry 5 has a wrong HMAC and is not on the audit topic: forged"),
    (_lrem, "audit log TAMPERED: 1 entry (seq 2) after entry 1 was deleted; the first: acknowledge INC-2"),
    (_del, "audit log TAMPERED: 5 entries missing from Redis, last at seq 4 (acknowledge INC-4"),
]


@pytest.mark.parametrize(("tamper", "line"), TAMPERS, ids=[t[0].__name__[1:] for t in TAMPERS])
async def test_a_tampered_trail_fails_verify_with_one_line(
    trail: Trail, tamper: Callable[[Trail], Awaitable[None]], line: str
) -> None:
    await trail.append(5)
    await tamper(trail)
    done = await verify(trail.settings)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(line), done.stderr
    assert done.stderr.count("\n") == 1
    print(done.stderr.strip())


async def test_the_anchor_catches_up_after_a_failed_publish(trail: Trail) -> None:
    await trail.append(2)
    # Kafka away for one append: the action stands in Redis, the publish fails and is logged.
    dead = KafkaAnchor(f"127.0.0.1:{free_port()}", trail.settings.topics.audit)
    away = AuditLog(trail.redis, Keys(trail.settings.key_prefix), secret=SECRET.encode(), anchor=dead)
    entry = await away.append(at=time.time(), who="human:erin", action="resolve", target="INC-9", why="fixed")
    assert entry["seq"] == 2
    done = await verify(trail.settings)
    assert done.returncode == 1
    assert done.stderr.startswith(
        "audit log NOT ANCHORED: 1 entry not on the audit topic (seq 2): sealed, so written by the monitor"
    )
    print(done.stderr.strip())
    await trail.append(1, start=3)  # Kafka back: the next append re-sends entry 2 first
    anchored = await read_anchor(trail.settings.kafka_bootstrap, trail.settings.topics.audit)
    assert [e["seq"] for e in anchored or []] == [0, 1, 2, 3]
    done = await verify(trail.settings)
    assert done.returncode == 0 and "intact: 4 entries" in done.stdout, done.stderr


async def test_legacy_entries_still_verify_and_are_reported(trail: Trail) -> None:
    prev = "0" * 64
    for seq in range(3):  # as the unkeyed chain wrote them before this change
        old: dict[str, Any] = {
            "seq": seq,
            "at": T0 + seq,
            "who": "human:dana",
            "action": "escalate",
            "target": "loan-approval",
            "why": "old",
            "details": {"level": 3},
            "prev": prev,
        }
        old["hash"] = legacy_hash(old)
        prev = old["hash"]
        await trail.redis.rpush(trail.key, orjson.dumps(old))
    await trail.append(2, start=3)
    done = await verify(trail.settings)
    assert done.returncode == 0, done.stderr
    assert "audit log intact: 5 entries" in done.stdout
    assert "  note: 3 entries (seq 0..2) unkeyed legacy: SHA-256 only" in done.stdout
    print(done.stdout.strip())


async def test_a_tail_lost_with_a_machine_crash_is_missing_and_restored(
    services: tuple[str, str], tmp_path: Path
) -> None:
    # A Redis of its own, persisted as shipped (AOF, fsync every second). A machine crash is made as
    # tests/integration/test_recovery.py makes it: kill -9, then the append-only file cut back to
    # what it held before the newest entry (its write had not been fsynced yet).
    port = 16480
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    command += list(REDIS_PERSISTENCE)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    settings = unique_settings(services[0], url, audit_secret=SecretStr(SECRET))
    await ensure_topics(settings)
    redis = Redis.from_url(url)
    anchor = KafkaAnchor(settings.kafka_bootstrap, settings.topics.audit)
    log = AuditLog(redis, Keys(settings.key_prefix), secret=SECRET.encode(), anchor=anchor)
    t = Trail(settings, redis, log, anchor)
    try:
        await _wait_ping(redis)
        await t.append(3)
        (aof,) = (tmp_path / "appendonlydir").glob("*.incr.aof")
        kept = aof.stat().st_size
        await t.append(1, start=3)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        assert aof.stat().st_size > kept
        os.truncate(aof, kept)  # the machine went down before the newest entry reached the disk
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        await _wait_ping(redis)
        assert await redis.llen(t.key) == 3
        done = await verify(settings)
        assert done.returncode == 1
        assert done.stderr.startswith(
            "audit log INCOMPLETE: 1 entry missing from Redis, last at seq 3 (acknowledge INC-3 by human:dana"
        ), done.stderr
        assert "written within 2 s before Redis restarted at" in done.stderr
        print(done.stderr.strip())
        restored = await asyncio.to_thread(cli, settings, "audit", "restore")
        assert restored.returncode == 0 and restored.stdout.startswith("restored 1 entry from topic"), (
            restored.stderr
        )
        done = await verify(settings)
        assert done.returncode == 0 and "intact: 4 entries" in done.stdout, done.stderr
    finally:
        await anchor.stop()
        await redis.aclose()
        if server.poll() is None:
            server.terminate()
            server.wait(10)


async def _wait_ping(redis: Redis) -> None:
    for _ in range(100):
        try:
            if await redis.ping():  # type: ignore[misc]
                return
        except Exception:  # not listening yet
            await asyncio.sleep(0.05)
    raise AssertionError("the test's Redis did not start")


async def test_audit_list_filters(trail: Trail) -> None:
    await trail.append(3)
    await trail.log.append(
        at=time.time(), who="human:erin", action="escalate", target="loan", why="audit week", level=3
    )
    done = await asyncio.to_thread(cli, trail.settings, "audit", "list", "--who", "erin")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "AT", "(UTC)", "WHO", "ACTION", "TARGET", "WHY", "DETAILS"]
    assert lines[1].split()[0] == "3" and "human:erin  escalate  loan    audit week  level=3" in lines[1]
    assert len(lines) == 2
    done = await asyncio.to_thread(cli, trail.settings, "audit", "list", "--target", "INC-1", "--json")
    [entry] = orjson.loads(done.stdout)
    assert (entry["seq"], entry["details"]) == (1, {"command": "cmd-1"})
    done = await asyncio.to_thread(
        cli, trail.settings, "audit", "list", "--since", "1h", "--limit", "2", "--json"
    )
    assert [e["seq"] for e in orjson.loads(done.stdout)] == [2, 3]
    done = await asyncio.to_thread(cli, trail.settings, "audit", "list", "--until", "2020-01-01")
    assert done.stdout == "(none)\n"
    bad = await asyncio.to_thread(cli, trail.settings, "audit", "list", "--since", "yesterday")
    assert bad.returncode == 2 and "'yesterday' is no time" in bad.stderr


async def test_the_audit_topic_keeps_every_record_and_a_deleting_one_is_refused(
    services: tuple[str, str],
) -> None:
    settings = unique_settings(*services)
    await ensure_topics(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        name = settings.topics.audit
        wanted = ("cleanup.policy", "retention.ms", "retention.bytes")
        [answer] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, dict.fromkeys(wanted))]
        )
        found = {e[0]: e[1] for _, _, _, _, entries in answer.resources for e in entries}
        assert found == {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
        assert len((await admin.describe_topics([name]))[0]["partitions"]) == 1
        other = unique_settings(*services)
        from aiokafka.admin import NewTopic

        await admin.create_topics(
            [NewTopic(other.topics.audit, 1, 1, topic_configs={"retention.ms": "604800000"})]
        )
    finally:
        await admin.close()
    with pytest.raises(
        TopicConfigError, match=r"has retention.ms=604800000, but the monitor needs retention.ms=-1"
    ):
        await ensure_topics(other)


async def test_an_append_after_a_removed_tail_keeps_both_on_the_topic(trail: Trail) -> None:
    await trail.append(3)
    await trail.redis.rpop(trail.key)
    [again] = await trail.append(1, start=7)  # takes seq 2, which the topic already holds
    assert again["seq"] == 2
    anchored = await read_anchor(trail.settings.kafka_bootstrap, trail.settings.topics.audit)
    assert [(e["seq"], e["target"]) for e in anchored or []] == [
        (0, "INC-0"),
        (1, "INC-1"),
        (2, "INC-2"),
        (2, "INC-7"),
    ]
    done = await verify(trail.settings)
    assert done.returncode == 1
    assert done.stderr.startswith(
        "audit log TAMPERED: 1 entry missing from Redis, last at seq 2 (acknowledge INC-2 by human:dana"
    ), done.stderr
    print(done.stderr.strip())


async def test_no_audit_topic_is_not_called_intact(services: tuple[str, str]) -> None:
    settings = unique_settings(*services, audit_secret=SecretStr(SECRET))  # its topics never created
    redis = Redis.from_url(settings.redis_url)
    try:
        await AuditLog(redis, Keys(settings.key_prefix), secret=SECRET.encode()).append(
            at=time.time(), who="human:dana", action="resolve", target="INC-1", why="fixed"
        )
    finally:
        await redis.aclose()
    done = await verify(settings)
    assert done.returncode == 1
    assert done.stderr == (
        f"audit log NOT ANCHORED: the audit topic {settings.topics.audit!r} does not exist "
        "(MONITOR_TOPIC_AUDIT), so a removed entry would go unnoticed; the worker creates it at start\n"
    )
    alone = await asyncio.to_thread(cli, settings, "audit", "verify", "--no-anchor")
    assert alone.returncode == 0 and alone.stdout.startswith(
        "audit log intact: 1 entry (checked against the Redis chain alone"
    )


async def test_a_broker_that_never_answers_holds_an_append_for_the_publish_timeout_only(
    trail: Trail, caplog: pytest.LogCaptureFixture
) -> None:
    from monitor.audit.log import PUBLISH_TIMEOUT_S

    held: list[tuple[asyncio.StreamWriter, asyncio.Task[object]]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        held.append((writer, task))
        await asyncio.sleep(60)  # accepts the connection, never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        hung = KafkaAnchor(f"127.0.0.1:{port}", trail.settings.topics.audit)
        log = AuditLog(trail.redis, Keys(trail.settings.key_prefix), secret=SECRET.encode(), anchor=hung)
        started = time.monotonic()
        entry = await log.append(at=time.time(), who="human:dana", action="resolve", target="INC-1", why="x")
        took = time.monotonic() - started
        await hung.stop()
    finally:
        for writer, task in held:  # no connection or handler outlives the test
            task.cancel()
            writer.close()
        server.close()
        await server.wait_closed()
    assert PUBLISH_TIMEOUT_S <= took < PUBLISH_TIMEOUT_S + 2, took
    assert entry["seq"] == 0 and await trail.redis.llen(trail.key) == 1  # the action stands
    assert "audit entry 0 not anchored yet: TimeoutError" in caplog.text
