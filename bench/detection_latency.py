"""Detection latency: from the event that crosses a threshold to the control message on `control`.

Starts one `monitor run` worker with its own topics, consumer group, Redis prefix, web port and
evidence directory (the defaults otherwise: 1 s evaluation interval, 0.1 s batch linger), waits for
/readyz, then runs one warm-up trial (not counted) and N trials (default 20), each on a fresh model:

  1. warm traffic: 190 successful predictions, as one JSON-array message; wait until the worker
     has aggregated them (the model's `events` counter in Redis). The `error-rate` rule (5 min
     window, > 1 %, decided by a sequential detector that needs 200 requests since the change it
     fires on) cannot fire on them. It is the rule one burst crosses fastest: a rate rule with no
     baseline, no labels and no groups, whose detector sees the burst the tick it is aggregated.
  2. a random pause of 0-1 s, so the burst lands at a random phase of the evaluator's timer;
  3. the breach: 200 errored predictions with `ts` = now, as one message (a failure storm). The
     detector's run starts with them, the last makes its 200th request, and 200 failures against
     a 1 % boundary are far more evidence than its bar needs, so the last `ts` is when the rule
     could first fire;
  4. wait for the model's control message (key = model_id) on the control topic.

latency = arrival wall time of the control message - `ts` of the breaching event. Each trial is
split into: ingest (ts → the burst is in Redis, polled every 10 ms), wait for the tick (→ the
message's `issued_at`, which is the evaluator's clock at the start of the tick), the tick's own
work until the publisher sent it (→ the Kafka record's CreateTime), and delivery (→ arrival).
("wait for tick" goes below zero when a tick had started before the burst was in Redis but read
the windows after it: the reads come after the tick's first steps, late under CPU contention; and
the bench's own poll runs every 10 ms.)
Prints every trial, p50, p99 (numpy.percentile, linear), max, and whether p99 ≤ 1.5 s.

Usage: .venv/bin/python bench/detection_latency.py [--trials 20] [--timeout 300] [--log worker.log]
Needs the local services (`monitor services up`); everything it creates is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.dev import services  # noqa: E402
from monitor.settings import Settings, Topics  # noqa: E402
from monitor.store.keys import Keys  # noqa: E402
from monitor.topics import ensure_topics  # noqa: E402

TARGET_P99_S = 1.5
WARM_EVENTS = 190  # healthy: the detector cannot fire on these
BREACH_EVENTS = 200  # all errors: error-rate's min_samples since the change, in one message
TRIAL_TIMEOUT_S = 20.0
READY_TIMEOUT_S = 90.0
POLL_S = 0.01


@dataclass(frozen=True)
class Trial:
    """One threshold crossing and when its control message came (wall-clock seconds)."""

    model_id: str
    breach_ts: float  # `ts` of the event that crossed the threshold
    aggregated_at: float  # first time the burst was seen in Redis (bench's own poll)
    issued_at: float  # the control message's issued_at: the evaluator tick's clock
    created_at: float  # the Kafka record's CreateTime: when the worker's producer sent it
    arrived_at: float  # when this consumer received it
    level: int
    reason: str

    @property
    def latency(self) -> float:
        return self.arrived_at - self.breach_ts

    def phases(self) -> dict[str, float]:
        """Where the latency went, in order; the phases add up to it."""
        return {
            "ingest": self.aggregated_at - self.breach_ts,
            "wait for tick": self.issued_at - self.aggregated_at,
            "tick→publish": self.created_at - self.issued_at,
            "delivery": self.arrived_at - self.created_at,
        }

    def parts(self) -> str:
        return "  ".join(f"{name} {value:6.3f}" for name, value in self.phases().items())


# ---------------------------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_settings(kafka: str, redis: str, evidence_dir: Path) -> Settings:
    """Defaults, except for names no one else uses (topics, group, Redis prefix, port)."""
    tag = f"lat-{uuid.uuid4().hex[:8]}"
    topics = Topics.model_validate({k: f"bench-{tag}-{v}" for k, v in Topics().model_dump().items()})
    return Settings().with_overrides(
        kafka_bootstrap=kafka,
        redis_url=redis,
        topics=topics,
        app_id=f"bench-{tag}",
        key_prefix=f"bench-{tag}",
        web_port=free_port(),
        partitions=4,
        evidence_dir=evidence_dir,
    )


@contextlib.asynccontextmanager
async def worker(settings: Settings, log_path: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`monitor run` in its own process group; SIGTERM, then SIGKILL, on the way out."""
    env = {**os.environ, **settings.to_env()}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run"],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def wait_ready(settings: Settings, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    url = f"http://127.0.0.1:{settings.web_port}/readyz"
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited ({proc.returncode}):\n{log_tail(log_path)}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.25)
    raise RuntimeError(f"the worker was not ready within {READY_TIMEOUT_S:.0f} s:\n{log_tail(log_path)}")


async def evaluator_metrics(settings: Settings) -> dict[str, float]:
    """The worker's own view: evaluator tick duration and detection lag (sums and counts)."""
    url = f"http://127.0.0.1:{settings.web_port}/metrics"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(url) as resp:
            text = await resp.text()
    wanted = (
        "aimon_evaluator_tick_seconds_sum",
        "aimon_evaluator_tick_seconds_count",
        "aimon_detection_lag_seconds_sum",
        "aimon_detection_lag_seconds_count",
    )
    return {
        line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(wanted)
    }


# ---------------------------------------------------------------------------------------------
# Control messages
# ---------------------------------------------------------------------------------------------


class ControlWatch:
    """Reads the whole control topic in the background; hands out the first message per model."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topics.control
        self.partitions = settings.partitions
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
        )
        self.waiting: dict[str, asyncio.Future[tuple[float, float, dict[str, object]]]] = {}
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        parts = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        self.consumer.assign(parts)
        await self.consumer.seek_to_beginning(*parts)
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()

    def expect(self, model_id: str) -> asyncio.Future[tuple[float, float, dict[str, object]]]:
        """(arrival, record CreateTime, message) of the model's first control message."""
        return self.waiting.setdefault(model_id, asyncio.get_running_loop().create_future())

    async def _run(self) -> None:
        try:
            while True:
                for records in (await self.consumer.getmany(timeout_ms=100)).values():
                    arrived = time.time()
                    for record in records:
                        model_id = (record.key or b"").decode()
                        future = self.expect(model_id)
                        if not future.done():
                            future.set_result((arrived, record.timestamp / 1000, orjson.loads(record.value)))
        except Exception as exc:  # a trial waiting for its message hears of it at once
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(RuntimeError(f"reading the control topic failed: {exc!r}"))
            raise


# ---------------------------------------------------------------------------------------------
# One trial
# ---------------------------------------------------------------------------------------------


def predictions(model_id: str, start: int, count: int, *, error: bool) -> list[dict[str, object]]:
    """`count` predictions stamped now; errored ones carry an error code instead of a decision."""
    events: list[dict[str, object]] = []
    for i in range(start, start + count):
        event: dict[str, object] = {
            "model_id": model_id,
            "model_version": "1.0",
            "request_id": f"{model_id}-{i}",
            "ts": time.time(),
            "latency_ms": 20.0,
        }
        event.update(
            {"error": "upstream_timeout"} if error else {"prediction": 1, "positive": True, "confidence": 0.9}
        )
        events.append(event)
    return events


async def aggregated(redis: Redis, keys: Keys, model_id: str, events: int, timeout_s: float) -> float:
    """Poll the model's event counter until it reaches `events`; the wall time it was first seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = await redis.hget(keys.meta(model_id), "events")
        if seen is not None and int(seen) >= events:
            return time.time()
        await asyncio.sleep(POLL_S)
    raise RuntimeError(f"{model_id}: fewer than {events} events aggregated within {timeout_s:.0f} s")


async def trial(
    settings: Settings,
    producer: AIOKafkaProducer,
    redis: Redis,
    watch: ControlWatch,
    model_id: str,
    rng: random.Random,
) -> Trial:
    keys = Keys(settings.key_prefix)
    topic = settings.topics.predictions
    await producer.send_and_wait(topic, orjson.dumps(predictions(model_id, 0, WARM_EVENTS, error=False)))
    await aggregated(redis, keys, model_id, WARM_EVENTS, TRIAL_TIMEOUT_S)
    arrival = watch.expect(model_id)
    await asyncio.sleep(rng.uniform(0.0, 1.0))  # a random phase of the evaluator's 1 s timer
    burst = predictions(model_id, WARM_EVENTS, BREACH_EVENTS, error=True)
    breach_ts = float(burst[-1]["ts"])  # type: ignore[arg-type]
    await producer.send_and_wait(topic, orjson.dumps(burst))
    aggregated_at = await aggregated(redis, keys, model_id, WARM_EVENTS + BREACH_EVENTS, TRIAL_TIMEOUT_S)
    try:
        arrived_at, created_at, message = await asyncio.wait_for(asyncio.shield(arrival), TRIAL_TIMEOUT_S)
    except TimeoutError:
        raise RuntimeError(f"{model_id}: no control message within {TRIAL_TIMEOUT_S:.0f} s") from None
    return Trial(
        model_id,
        breach_ts,
        aggregated_at,
        float(message["issued_at"]),
        created_at,  # type: ignore[arg-type]
        arrived_at,
        int(message["level"]),
        str(message["reason"]),
    )  # type: ignore[call-overload]


# ---------------------------------------------------------------------------------------------
# Report, clean-up, main
# ---------------------------------------------------------------------------------------------


def report(trials: list[Trial], ticks: dict[str, float]) -> bool:
    latencies = np.array([t.latency for t in trials])
    p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
    ok = bool(p99 <= TARGET_P99_S)
    print(
        f"\n{len(trials)} trials: p50 {p50:.3f} s   p99 {p99:.3f} s   max {latencies.max():.3f} s   "
        f"target p99 ≤ {TARGET_P99_S} s: {'met' if ok else 'MISSED'}"
    )
    for name in trials[0].phases():
        values = np.array([t.phases()[name] for t in trials])
        print(
            f"  {name:14} mean {values.mean():6.3f}  p50 {np.percentile(values, 50):6.3f}  "
            f"max {values.max():6.3f}"
        )
    count = ticks.get("aimon_evaluator_tick_seconds_count", 0.0)
    if count:
        print(
            f"  evaluator ticks: {count:.0f}, mean duration "
            f"{ticks['aimon_evaluator_tick_seconds_sum'] / count:.3f} s "
            "(ticks start every 1 s, at a fixed rate)"
        )
    lags = ticks.get("aimon_detection_lag_seconds_count", 0.0)
    if lags:
        print(
            f"  aimon_detection_lag_seconds (newest event → tick start): mean "
            f"{ticks['aimon_detection_lag_seconds_sum'] / lags:.3f} s over {lags:.0f} incidents"
        )
    return ok


async def clean_up(settings: Settings) -> None:
    """Best effort: the bench's topics and Redis keys go (the services are shared)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15_000)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(admin.start(), 15)
        ours = set(settings.topics.model_dump().values())  # and Faust's own __assignor-__leader
        ours |= {n for n in await admin.list_topics() if n.startswith(f"{settings.app_id}-")}
        await asyncio.wait_for(admin.delete_topics(sorted(ours)), 15)
    await admin.close()
    redis = Redis.from_url(settings.redis_url)
    try:
        with contextlib.suppress(Exception):
            async for key in redis.scan_iter(match=f"{settings.key_prefix}:*", count=1000):
                await redis.unlink(key)
    finally:
        await redis.aclose()


async def run(trials: int, log_path: Path | None, seed: int) -> bool:
    status = await asyncio.to_thread(services.up)
    workdir = Path(tempfile.mkdtemp(prefix="detection-latency-"))
    settings = bench_settings(status.kafka_bootstrap, status.redis_url, workdir / "evidence")
    log_path = log_path or workdir / "worker.log"
    rng = random.Random(seed)
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=0)
    redis = Redis.from_url(settings.redis_url)
    watch = ControlWatch(settings)
    try:
        async with worker(settings, log_path) as proc:
            await wait_ready(settings, proc, log_path)
            await producer.start()
            await watch.start()
            print(
                f"worker ready (app {settings.app_id}); eval interval {settings.eval_interval_s} s, "
                f"batch within {settings.batch_within_s} s"
            )
            done: list[Trial] = []
            for i in range(trials + 1):
                label = "warm-up" if i == 0 else f"trial {i:2d}"
                try:
                    t = await trial(settings, producer, redis, watch, f"{settings.app_id}-m{i:02d}", rng)
                except RuntimeError as exc:
                    raise RuntimeError(f"{label}: {exc}\nworker log:\n{log_tail(log_path)}") from None
                print(f"{label}  latency {t.latency:6.3f} s   {t.parts()}   level {t.level}")
                if i:
                    done.append(t)
            return report(done, await evaluator_metrics(settings))
    finally:
        await watch.stop()
        await producer.stop()
        await redis.aclose()
        await clean_up(settings)
        shutil.rmtree(workdir, ignore_errors=True)  # evidence, and the log unless --log kept it


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=300.0, help="hard limit of the whole run, seconds")
    parser.add_argument("--log", type=Path, help="keep the worker's log here")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random tick phases")
    args = parser.parse_args()
    try:
        ok = asyncio.run(asyncio.wait_for(run(args.trials, args.log, args.seed), args.timeout))
    except TimeoutError:  # only the hard limit raises it; a stuck trial raises RuntimeError
        sys.exit(f"detection_latency: no result within {args.timeout:.0f} s (hard timeout)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
