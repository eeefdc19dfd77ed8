"""`monitor demo`: local services, a worker, synthetic traffic with an injected degradation, live figures."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer

from monitor.clients.gateway import GatewayClient
from monitor.dev import services
from monitor.dev.traffic import BatchingProducer, TrafficProfile, predictions
from monitor.exceptions import MonitorError
from monitor.incidents.store import IncidentStore
from monitor.security import kafka_client_options, kafka_security, redis_client
from monitor.settings import Settings, Topics
from monitor.store.keys import Keys
from monitor.store.redis import RedisStore
from monitor.topics import ensure_topics

PROFILES = (
    TrafficProfile("credit-scoring", "2.3.0", approval_rate=0.62),
    TrafficProfile("resume-screening", "1.4.1", approval_rate=0.35, latency_median_ms=90.0),
    TrafficProfile("claims-triage", "0.9.0", approval_rate=0.8, latency_median_ms=25.0),
)
# After 20 s (or halfway through a shorter demo), the credit model degrades: errors jump from 0.2 % to 8 %
# and latency triples.
DEGRADED = TrafficProfile(
    "credit-scoring", "2.3.0", approval_rate=0.62, error_rate=0.08, latency_median_ms=120.0
)
WINDOW_S = 300
READY_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 15


class DemoError(MonitorError):
    """The demo cannot go on: its worker died, never became ready, or its port is taken."""


def _port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port (then /readyz would not be our worker's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # The worker's web server binds with SO_REUSEADDR; so does the probe, so that a port left in
        # TIME_WAIT by an earlier run counts as free, and only a live listener counts as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "    (no log)"
    return "\n".join(f"    {line}" for line in text.splitlines()[-lines:]) or "    (the log is empty)"


class Worker:
    """The demo's own `monitor run` child: started here, watched here, stopped here."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.log_path = log_path
        env = {**os.environ, **settings.to_env()}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:  # a fresh log per run: its tail is this run's
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def check(self, when: str) -> None:
        """Raise DemoError, with the worker's last log lines, if the worker has exited."""
        code = self.proc.poll()
        if code is not None:
            raise DemoError(
                f"the demo's worker (pid {self.proc.pid}) exited with code {code} {when}; "
                f"the last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
            )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop in 30 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def run_demo(*, duration_s: float, rate_per_s: float) -> int:
    """Run the demo end to end; returns the exit code."""
    print("starting local Kafka and Redis (the first run downloads the broker, about 45 MB)…")
    config = services.ServiceConfig.from_env()
    status = services.up(config)
    print(f"  kafka {status.kafka_bootstrap}, redis {status.redis_url}: ready in {status.startup_s:.1f}s")
    # Every run gets its own topics, consumer group and Redis prefix, so a second run starts clean
    # instead of finding the first run's incidents still open.
    run = time.strftime("%Y%m%d-%H%M%S")
    topics = Topics.model_validate(
        {name: f"demo-{run}-{value}" for name, value in Topics().model_dump().items()}
    )
    settings = Settings().with_overrides(
        kafka_bootstrap=status.kafka_bootstrap,
        redis_url=status.redis_url,
        app_id=f"aimon-demo-{run}",
        key_prefix=f"demo-{run}",
        topics=topics,
        partitions=2,
    )
    base = settings.web_url
    if _port_taken(settings.web_host, settings.web_port):
        raise DemoError(
            f"{settings.web_host}:{settings.web_port} is already in use (another worker?), so the demo "
            "could not tell its own worker's answers from that process's; stop it or set MONITOR_WEB_PORT "
            "to a free port"
        )
    asyncio.run(ensure_topics(settings))
    log_path = config.state_dir / "demo-worker.log"
    worker = Worker(settings, log_path)
    print(f"  worker pid {worker.proc.pid}, web {base}, log {log_path}", flush=True)
    try:
        asyncio.run(_drive(settings, worker, duration_s, rate_per_s))
    finally:
        worker.stop()
    print("\nthe worker has stopped; Kafka and Redis keep running (`monitor services down` stops them)")
    return 0


async def _drive(settings: Settings, worker: Worker, duration_s: float, rate_per_s: float) -> None:
    base = settings.web_url
    await _wait_ready(base, worker)
    redis = redis_client(settings)
    store = RedisStore(
        redis,
        Keys(settings.key_prefix),
        minute_ttl_s=settings.minute_bucket_ttl_s,
        hour_ttl_s=settings.hour_bucket_ttl_s,
    )
    watcher = AIOKafkaConsumer(
        settings.topics.control,
        settings.topics.incidents,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        **kafka_client_options(settings),
    )
    await watcher.start()
    gateway = GatewayClient(
        settings.kafka_bootstrap, settings.topics.control, security=kafka_security(settings)
    )
    try:
        await gateway.start()
        await gateway.wait_caught_up()
        await _traffic(settings, worker, store, watcher, gateway, duration_s, rate_per_s)
        opened = await IncidentStore(redis, Keys(settings.key_prefix)).recent(20)
    finally:
        await watcher.stop()
        await gateway.stop()
        await redis.aclose()
    print("\nsummary:")
    for incident in opened:
        print(
            f"  {incident.id} {incident.severity:<8} {incident.rule:<16} "
            f"{incident.model_id}: {incident.summary}"
        )
        print(f"      evidence {incident.evidence_ref}")
    if not opened:
        print("  no incident opened")


async def _traffic(
    settings: Settings,
    worker: Worker,
    store: RedisStore,
    watcher: AIOKafkaConsumer,
    gateway: GatewayClient,
    duration_s: float,
    rate_per_s: float,
) -> None:
    """Send the traffic, once a second, and print what the monitor makes of it."""
    base = settings.web_url
    streams = {p.model_id: predictions(p, seed=i) for i, p in enumerate(PROFILES)}
    per_model = rate_per_s / len(PROFILES)
    started = time.monotonic()
    degraded = False
    sent = 0
    seen_levels: dict[str, int] = {}
    async with BatchingProducer(
        settings.kafka_bootstrap, settings.topics.predictions, kafka_options=kafka_client_options(settings)
    ) as producer:
        while (elapsed := time.monotonic() - started) < duration_s:
            if not degraded and elapsed >= min(20.0, duration_s / 2):
                degraded = True
                streams[DEGRADED.model_id] = predictions(DEGRADED, seed=99)
                print(f"\n>>> injected: {DEGRADED.model_id} errors 0.2 % → 8 %, latency ×3\n")
            batch = []
            for stream in streams.values():
                for event in itertools.islice(stream, int(per_model)):
                    event["ts"] = time.time()
                    batch.append(event)
            worker.check("while the demo ran")
            await producer.send(batch)
            sent += len(batch)
            await _show(store, base, sent, elapsed)
            await _show_messages(watcher, settings)
            _show_gateway(gateway, seen_levels)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started - elapsed)))


def _show_gateway(gateway: GatewayClient, seen: dict[str, int]) -> None:
    """What a gateway now does with a request of 0.70 confidence, whenever a model's level changes."""
    for profile in PROFILES:
        route = gateway.route(profile.model_id, confidence=0.70)
        if seen.get(profile.model_id, 0) != route.level:
            seen[profile.model_id] = route.level
            print(
                f"\n=== GATEWAY {profile.model_id}: a request with confidence 0.70 now goes to "
                f"{route.decision} (level {route.level}: {route.reason})\n"
            )


async def _show_messages(watcher: AIOKafkaConsumer, settings: Settings) -> None:
    for records in (await watcher.getmany(timeout_ms=50)).values():
        for record in records:
            body = orjson.loads(record.value)
            if record.topic == settings.topics.control:
                review = body.get("review_below_confidence")
                below = "no confidence review" if review is None else f"review below confidence {review}"
                print(
                    f"\n=== CONTROL {body['model_id']} seq {body['seq']}: level {body['level']}, "
                    f"mode {body['mode']}, {below}, "
                    f"sampling {body['review_sampling_rate']:.0%}\n    {body['reason']}\n"
                )
            else:
                obs = body["observation"]
                test = obs.get("test", {})
                evidence = (
                    f"evidence {test['statistic']:.1f} of {test['boundary']:.1f}"
                    if "statistic" in test
                    else f"p = {test.get('p_value', float('nan')):.2g}"
                )
                print(
                    f"\n=== INCIDENT {body['event'].upper()} {body['id']} {body['severity']} "
                    f"{body['category']}/{body['rule']} on {body['model_id']} {body['model_version'] or ''}\n"
                    + (f"    {obs['explanation']}\n" if "explanation" in obs else "")
                    + f"    value {obs.get('value'):.4g} vs threshold {obs.get('threshold')}, "
                    f"{obs.get('samples')} samples, {evidence}\n"
                )


async def _wait_ready(base: str, worker: Worker, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until the worker's /readyz says 200; its death or the timeout is a DemoError with its log tail."""
    started = time.monotonic()
    last_said = started
    detail = "no answer yet"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while (waited := time.monotonic() - started) < timeout_s:
            worker.check("at start")
            try:
                async with session.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        print(f"  worker ready after {waited:.1f}s", flush=True)
                        return
                    detail = f"/readyz answers {resp.status}: {(await resp.text())[:200]}"
            except (TimeoutError, aiohttp.ClientError):
                pass
            if time.monotonic() - last_said >= 5:
                last_said = time.monotonic()
                print(f"  waiting for the worker to be ready… {waited:.0f}s ({detail})", flush=True)
            await asyncio.sleep(0.5)
    worker.check("at start")
    raise DemoError(
        f"the worker did not become ready within {timeout_s:.0f}s ({detail}); "
        f"the last lines of {worker.log_path}:\n{_log_tail(worker.log_path)}"
    )


async def _show(store: RedisStore, base: str, sent: int, elapsed: float) -> None:
    now = time.time()
    lines = [f"t={elapsed:5.1f}s  produced {sent:>8,} predictions"]
    for profile in PROFILES:
        stats = await store.window(profile.model_id, profile.model_version, now - WINDOW_S, now + 60)
        p95 = stats.latency_quantile_s(0.95)
        lines.append(
            f"  {profile.model_id:<17} {stats.count:>8,} in 5m   "
            f"errors {100 * (stats.error_rate or 0):5.2f} %"
            f"   p95 {1000 * (p95 or 0):7.1f} ms"
        )
    print("\n".join(lines), flush=True)
