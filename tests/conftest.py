"""Shared fixtures: the real local services, unique names per test, and a worker subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.incidents.incident import Incident
from monitor.settings import Settings, Topics

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def services() -> Iterator[tuple[str, str]]:
    """Kafka bootstrap and Redis URL of the real services (local ones started if not running).

    One address per service: `MONITOR_KAFKA_BOOTSTRAP` and `MONITOR_REDIS_URL`, the addresses a
    worker started in this environment dials; the local services listen there.
    """
    from monitor.dev import services as local

    settings = Settings()
    local.up(local.ServiceConfig.from_settings(settings))
    yield settings.kafka_bootstrap, settings.redis_url
    # Not asyncio.run(): that would reset the thread's current event loop (pytest-asyncio's).
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        runner.run(_forget_the_run(settings, sorted(TAGS)))


# The tags of every `unique_settings` of this run. Their topics and keys go at the end of the run:
# kept, they piled up run after run on the local broker (12,786 partition directories, 2.1 GB, once
# a broker of 512 MB heap no longer started) and in Redis's append-only file (1.7 GB).
TAGS: set[str] = set()


async def _forget_the_run(settings: Settings, tags: list[str]) -> None:
    """Delete the topics (Faust's own included) and Redis keys of this run's unique settings."""
    from aiokafka.admin import AIOKafkaAdminClient
    from redis.asyncio import Redis

    if not tags:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        await asyncio.wait_for(admin.start(), 10)
        ours = sorted(t for t in await admin.list_topics() if any(tag in t for tag in tags))
        for start in range(0, len(ours), 200):
            await asyncio.wait_for(admin.delete_topics(ours[start : start + 200]), 60)
    except Exception as exc:  # best effort: a broker a test left stopped keeps them for next time
        print(f"\ntest topics not deleted: {exc!r}")
    finally:
        await admin.close()
    redis = Redis.from_url(settings.redis_url)
    try:
        prefixes = tuple(f"t{tag}:".encode() for tag in tags)
        async for key in redis.scan_iter(match="t*", count=10_000):
            if key.startswith(prefixes):
                await redis.unlink(key)
    except Exception as exc:
        print(f"\ntest keys not deleted: {exc!r}")
    finally:
        await redis.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_settings(kafka: str, redis: str, **overrides: object) -> Settings:
    """Settings whose topics, consumer group and Redis keys no other test uses."""
    tag = uuid.uuid4().hex[:10]
    TAGS.add(tag)
    overrides.setdefault("evidence_dir", Path(tempfile.mkdtemp(prefix="aimon-evidence-")))
    topics = Topics(**{name: f"{default}-{tag}" for name, default in Topics().model_dump().items()})
    return Settings(
        kafka_bootstrap=kafka,
        redis_url=redis,
        app_id=f"aimon-test-{tag}",
        key_prefix=f"t{tag}",
        topics=topics,
        partitions=4,
        web_port=free_port(),
        batch_within_s=0.05,
        **overrides,  # type: ignore[arg-type]
    )


class WorkerProcess:
    """`monitor run` in its own process, as an operator would start it."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{settings.web_port}"

    def start(self) -> None:
        env = {**os.environ, **self.settings.to_env()}
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                return proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            async with session.get(self.base + path, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                return resp.status, await resp.text()

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            try:
                status, _ = await self.get("/readyz")
                if status == 200:
                    return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.25)
        raise AssertionError(f"worker not ready after {timeout_s}s:\n{self.log_tail()}")

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
        status, text = await self.get("/metrics")
        assert status == 200, text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    async def wait_metric(self, name: str, at_least: float, timeout_s: float = 60.0, **labels: str) -> float:
        deadline = time.monotonic() + timeout_s
        value = 0.0
        while time.monotonic() < deadline:
            value = await self.metric(name, **labels)
            if value >= at_least:
                return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"{name}{labels} = {value}, wanted ≥ {at_least}:\n{self.log_tail()}")


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


async def seed_incident(settings: Settings, incident_id: str, model_id: str) -> Incident:
    """An open HIGH error-rate incident of `model_id` saved straight into the settings' Redis, as the
    evaluator would have saved it: for API tests that act on an incident without producing one."""
    from redis.asyncio import Redis

    from monitor.incidents.store import IncidentStore
    from monitor.store.keys import Keys

    now = time.time()
    incident = Incident(
        id=incident_id,
        category="availability",
        rule="error-rate",
        model_id=model_id,
        model_version="1.0",
        group=None,
        severity="HIGH",
        level=2,
        opened_at=now,
        updated_at=now,
        observation={"metric": "error_rate", "value": 0.03, "threshold": 0.01, "samples": 1200},
        scope={"window_s": 300, "decisions": 1200},
        outbox=["opened"],
    )
    incident.note(now, "opened", severity="HIGH", level=2)
    redis = Redis.from_url(settings.redis_url)
    try:
        await IncidentStore(redis, Keys(settings.key_prefix)).save([incident])
    finally:
        await redis.aclose()
    return incident
