"""Ingest throughput: the monitor against the limits of its own stack, on the local broker.

Pre-loads N prediction events (20 models, 6 group attributes) into two topics, once as arrays of
100 and once as single-object messages, then measures in the same run:
  (a) a bare aiokafka consumer that decodes every value with orjson (a Python consumer's limit),
  (b) a no-op Faust agent (Faust's per-message ceiling), on the single-object topic,
  (m) `monitor run`, until every event is aggregated in Redis.
Usage: .venv/bin/python bench/ingest_throughput.py [--events 200000] [--single 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faust_noop import faust_noop  # noqa: E402  (bench/ is on sys.path when run as a script)

from monitor.dev import services  # noqa: E402
from monitor.settings import Settings, Topics  # noqa: E402
from monitor.topics import ensure_topics  # noqa: E402

GROUPS = {
    "sex": "FM",
    "age_band": "abcde",
    "zip3": "0123456789",
    "region": "nesw",
    "income": "lmh",
    "channel": "wb",
}


def events(n: int, span_s: float = 3600.0) -> list[dict[str, object]]:
    """`n` events of 20 models over the last `span_s` seconds, in the order a gateway would send
    them: by time, each up to 2 s late (the bench before 2026-11-27 spread every batch over the
    whole hour, which no live stream does; BENCHMARKS.md keeps both figures)."""
    rng = random.Random(1)
    start = time.time() - span_s
    return [
        {
            "model_id": f"model-{i % 20}",
            "model_version": "1",
            "request_id": f"r{i}",
            "ts": start + span_s * i / n - rng.uniform(0, 2),
            "prediction": 1,
            "positive": rng.random() < 0.6,
            "confidence": 0.8,
            "latency_ms": rng.lognormvariate(3.5, 0.5),
            "groups": {k: rng.choice(v) for k, v in GROUPS.items()},
            "user_id": f"u{rng.randrange(10000)}",
            "subject_id": f"s{i}",
        }
        for i in range(n)
    ]


async def preload(bootstrap: str, topic: str, evs: list[dict[str, object]], batch: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        for start in range(0, len(evs), batch):
            chunk = evs[start : start + batch]
            await producer.send(topic, orjson.dumps(chunk if batch > 1 else chunk[0]))
        await producer.flush()
    finally:
        await producer.stop()


async def bare_consumer(bootstrap: str, topic: str, total: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"bench-{uuid.uuid4().hex[:6]}",
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < total:
            for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                for record in records:
                    value = orjson.loads(record.value)
                    seen += len(value) if isinstance(value, list) else 1
    finally:
        elapsed = time.perf_counter() - started
        await consumer.stop()
    return total / elapsed


def monitor_rate(
    settings: Settings, topic: str, total: int, profile: Path | None = None
) -> tuple[float, float]:
    """Start `monitor run` on a pre-loaded topic and time from the first aggregated event to the
    last, as counted by the worker's own metric (its start-up is not what is measured).
    Returns (events/s, the worker's resident memory in MiB when it is done)."""
    env = {
        **os.environ,
        **settings.model_copy(
            update={"topics": settings.topics.model_copy(update={"predictions": topic})}
        ).to_env(),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 1800
    url = f"http://127.0.0.1:{settings.web_port}/metrics"
    started: tuple[float, float] | None = None
    spy = None
    try:
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError("the monitor did not aggregate everything in 30 minutes")
            try:
                text = urllib.request.urlopen(url, timeout=5).read().decode()
            except OSError:
                time.sleep(0.1)
                continue
            value = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("aimon_events_ingested_total{")
            )
            if value > 0 and started is None:
                started = (time.perf_counter(), value)
                if profile is not None:  # py-spy's collapsed stacks of the worker while it ingests
                    spy = subprocess.Popen(
                        [
                            str(Path(sys.executable).parent / "py-spy"),
                            "record",
                            "--pid",
                            str(proc.pid),
                            "--format",
                            "raw",
                            "--rate",
                            "50",
                            "--nonblocking",
                            "-o",
                            str(profile),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
            if value >= total and started is not None:
                rate = (value - started[1]) / (time.perf_counter() - started[0])
                return rate, _rss_mib(proc.pid)
            time.sleep(0.5)  # each scrape reads Redis: scraping faster would slow the worker down
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        proc.kill()  # a worker's graceful shutdown is not what is measured
        proc.wait(30)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--single", type=int, default=50_000)
    parser.add_argument("--profile", type=Path, help="write py-spy collapsed stacks of the worker here")
    args = parser.parse_args()
    status = await asyncio.to_thread(services.up)
    tag = uuid.uuid4().hex[:6]
    topics = Topics.model_validate({k: f"bench-{tag}-{v}" for k, v in Topics().model_dump().items()})
    settings = Settings().with_overrides(
        kafka_bootstrap=status.kafka_bootstrap,
        redis_url=status.redis_url,
        topics=topics,
        app_id=f"bench-{tag}",
        key_prefix=f"bench-{tag}",
        web_port=16099,
        partitions=4,
    )
    await ensure_topics(settings)
    arrays, singles = f"bench-{tag}-arrays", f"bench-{tag}-singles"
    await ensure_topics(
        settings.model_copy(update={"topics": topics.model_copy(update={"predictions": arrays})})
    )
    await ensure_topics(
        settings.model_copy(update={"topics": topics.model_copy(update={"predictions": singles})})
    )
    data = events(args.events)
    await preload(settings.kafka_bootstrap, arrays, data, 100)
    await preload(settings.kafka_bootstrap, singles, data[: args.single], 1)
    # Every reader below reads the same pre-loaded topics from their start, one after the other.
    a_arrays = await bare_consumer(settings.kafka_bootstrap, arrays, args.events)
    a_single = await bare_consumer(settings.kafka_bootstrap, singles, args.single)
    b_single = await asyncio.to_thread(faust_noop, settings.kafka_bootstrap, singles, args.single)
    m_arrays, rss_arrays = await asyncio.to_thread(
        monitor_rate, settings, arrays, args.events, args.profile and args.profile.with_suffix(".arrays.txt")
    )
    m_single, rss_single = await asyncio.to_thread(
        monitor_rate,
        settings.model_copy(update={"app_id": f"bench-{tag}-2", "key_prefix": f"bench-{tag}-2"}),
        singles,
        args.single,
        args.profile and args.profile.with_suffix(".single.txt"),
    )
    print(
        f"events: {args.events:,} in arrays of 100, {args.single:,} as single messages "
        "(20 models, 6 attributes)"
    )
    print(f"{'':34}{'arrays of 100':>16}{'single messages':>18}")
    print(f"{'(a) aiokafka + orjson, events/s':34}{a_arrays:>16,.0f}{a_single:>18,.0f}")
    print(f"{'(b) no-op Faust agent, events/s':34}{'':>16}{b_single:>18,.0f}")
    print(f"{'(m) monitor, events/s':34}{m_arrays:>16,.0f}{m_single:>18,.0f}")
    print(f"{'ratio':34}{m_arrays / a_arrays:>15.2f}a{m_single / b_single:>17.2f}b")
    print(f"{'monitor worker RSS at the end, MiB':34}{rss_arrays:>16,.0f}{rss_single:>18,.0f}")


if __name__ == "__main__":
    asyncio.run(main())
