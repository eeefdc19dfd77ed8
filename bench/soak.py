"""Soak: mixed traffic at a steady rate for a long time, a worker kill and a Redis kill inside it.

Starts a redis-server of its own (persisted as shipped: AOF, fsync every second) on a free port and
a worker (`monitor run`) against the local broker, then for `--minutes` sends predictions of
`--models` models at `--rate` events/s, a label for 90 % of them (`--label-share`) 5-30 s later,
and access-log events at a tenth of the rate. At a third of the run it kills the worker
(`kill -9`) and starts a new one; at two thirds it kills Redis (`kill -9`) and restarts it from its
append-only file.

Every 2 s it samples the worker's RSS, Redis's used memory and key count, and how far the
aggregates in Redis are behind what was produced. At the end it waits for the backlog and compares
every count in Redis with what it sent. It prints the RSS and Redis-memory slopes (MiB per hour,
least squares over each segment between faults, after a 2-minute warm-up), how long the backlog
took to recover after each fault, and the counts.

Usage: .venv/bin/python bench/soak.py [--minutes 60] [--rate 300] [--models 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.aggregates.access import ACCESS_VERSION, QUERIES  # noqa: E402
from monitor.aggregates.predictions import LABELLED, SEP, escape  # noqa: E402
from monitor.dev.scratch_redis import ScratchRedis  # noqa: E402
from monitor.settings import Settings, Topics  # noqa: E402
from monitor.store.keys import MINUTE, Keys  # noqa: E402
from monitor.topics import ensure_topics  # noqa: E402

SAMPLE_S = 2.0
WARM_UP_S = 120.0
GROUPS = {"sex": "FM", "age_band": "abcde"}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Sent:
    predictions: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    access: int = 0

    @property
    def total(self) -> int:
        return sum(self.predictions.values())


@dataclass
class Sample:
    at: float  # seconds since start
    rss_mib: float
    redis_mib: float
    keys: int
    behind: int  # predictions sent but not in Redis yet


class Worker:
    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.settings.to_env(), "MONITOR_LOG_LEVEL": "warning"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run"], env=env, cwd=ROOT, stdout=log, stderr=log
            )

    def rss_mib(self) -> float:
        if self.process is None or self.process.poll() is not None:
            return float("nan")
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)


async def counted(redis: Redis, keys: Keys, models: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Predictions and matched labels per model, from the totals Redis holds."""
    pipe = redis.pipeline(transaction=False)
    for m in models:
        pipe.hmget(keys.totals(m), f"{escape('1')}|n", f"{escape('1')}|{LABELLED}")
    replies = await pipe.execute()
    preds = {m: int(r[0] or 0) for m, r in zip(models, replies, strict=True)}
    labels = {m: int(r[1] or 0) for m, r in zip(models, replies, strict=True)}
    return preds, labels


async def access_counted(redis: Redis, keys: Keys) -> int:
    """Access events in Redis: every one sent is a query, counted per principal in minute buckets."""
    total = 0
    pattern = keys.bucket("soak-access", ACCESS_VERSION, MINUTE, 0)[:-1] + "*"
    async for key in redis.scan_iter(match=pattern, count=1000):
        for name, value in (await redis.hgetall(key)).items():
            if name.decode().startswith(QUERIES + SEP):
                total += int(value)
    return total


async def produce(
    settings: Settings, models: list[str], rate: float, label_share: float, until: float, sent: Sent
) -> None:
    rng = random.Random(7)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    labels_due: list[tuple[float, str, dict[str, object]]] = []
    n = 0
    tick = 0.2
    try:
        next_at = time.monotonic()
        while time.monotonic() < until:
            now = time.time()
            batch: dict[str, list[dict[str, object]]] = {}
            for _ in range(int(rate * tick)):
                n += 1
                model = models[n % len(models)]
                positive = rng.random() < 0.6
                event = {
                    "model_id": model,
                    "model_version": "1",
                    "request_id": f"s{n}",
                    "ts": now,
                    "latency_ms": round(rng.lognormvariate(3.5, 0.3), 2),
                    "prediction": int(positive),
                    "positive": positive,
                    "groups": {a: rng.choice(v) for a, v in GROUPS.items()},
                    "user_id": f"u{rng.randrange(2000)}",
                }
                batch.setdefault(model, []).append(event)
                if rng.random() < label_share:
                    label = {"request_id": f"s{n}", "model_id": model, "label": int(positive), "ts": now}
                    labels_due.append((time.monotonic() + rng.uniform(5, 30), model, label))
            futures = []
            for model, events in batch.items():
                futures.append(await producer.send(settings.topics.predictions, orjson.dumps(events)))
                sent.predictions[model] = sent.predictions.get(model, 0) + len(events)
            due = [item for item in labels_due if item[0] <= time.monotonic()]
            labels_due = [item for item in labels_due if item[0] > time.monotonic()]
            if due:
                futures.append(
                    await producer.send(settings.topics.labels, orjson.dumps([label for _, _, label in due]))
                )
                for _, model, _ in due:
                    sent.labels[model] = sent.labels.get(model, 0) + 1
            access = [
                {
                    "ts": now,
                    "principal": f"svc-gateway-{rng.randrange(5)}",
                    "action": "query",
                    "resource_type": "endpoint",
                    "resource": "scoring-api",
                    "model_id": "soak-access",
                    "outcome": "allowed",
                    "source_ip": "10.0.0.1",
                }
                for _ in range(max(1, int(rate * tick / 10)))
            ]
            futures.append(await producer.send(settings.topics.access_logs, orjson.dumps(access)))
            sent.access += len(access)
            await asyncio.gather(*futures)
            next_at += tick
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        # The labels still due go out at the end, so every label sent is counted.
        if labels_due:
            await producer.send_and_wait(settings.topics.labels, orjson.dumps([x[2] for x in labels_due]))
            for _, model, _ in labels_due:
                sent.labels[model] = sent.labels.get(model, 0) + 1
    finally:
        await producer.stop()


def slope_mib_per_hour(samples: list[Sample], attr: str, start: float, end: float) -> float:
    points = [(s.at, getattr(s, attr)) for s in samples if start + WARM_UP_S <= s.at < end]
    points = [(t, v) for t, v in points if v == v]  # drop NaN (a worker being restarted)
    if len(points) < 3:
        return float("nan")
    t, v = np.array(points).T
    return float(np.polyfit(t / 3600, v, 1)[0])


def report(samples: list[Sample], faults: list[tuple[float, str]], end: float, rate: float) -> None:
    bounds = [0.0] + [at for at, _ in faults] + [end]
    names = ["start"] + [name for _, name in faults]
    print("\nslopes, MiB per hour (least squares, after a 2-minute warm-up in each segment)")
    print(f"  {'segment':34}{'worker RSS':>12}{'Redis memory':>14}")
    for lo, hi, name in zip(bounds, bounds[1:], names, strict=False):
        rss, mem = (
            slope_mib_per_hour(samples, "rss_mib", lo, hi),
            slope_mib_per_hour(samples, "redis_mib", lo, hi),
        )
        print(f"  {f'from {name} ({lo:.0f}-{hi:.0f} s)':34}{rss:>+12.1f}{mem:>+14.1f}")
    print("recovery after each fault (until less than 2 s of traffic is not yet in Redis)")
    for at, name in faults:
        later = [s for s in samples if s.at > at and s.behind <= 2 * rate]
        back = later[0].at - at if later else float("nan")
        worst = max((s.behind for s in samples if at < s.at <= at + (back if later else end)), default=0)
        print(f"  {name:16} at {at:6.0f} s: caught up after {back:4.0f} s, at most {worst} events behind")
    rss = [s.rss_mib for s in samples if s.rss_mib == s.rss_mib and s.at >= WARM_UP_S] or [float("nan")]
    last = samples[-1]
    print(
        f"worker RSS after warm-up min/median/max {min(rss):.0f}/{np.median(rss):.0f}/{max(rss):.0f} MiB; "
        f"Redis at the end {last.redis_mib:.1f} MiB in {last.keys} keys"
    )


async def opened_incidents(redis: Redis, keys: Keys) -> list[str]:
    """Each incident as "model rule severity: explanation"."""
    lines = []
    for member in await redis.zrange(keys.incident_index(), 0, -1):
        model_id, incident_id = member.decode().split("|", 1)
        raw = await redis.get(keys.incident(model_id, incident_id))
        if raw:
            incident = orjson.loads(raw)
            explained = incident.get("observation", {}).get("explanation") or incident.get("summary", "")
            lines.append(f"{model_id} {incident['rule']} {incident['severity']}: {str(explained)[:160]}")
    return lines


async def memory_by_family(redis: Redis, keys: Keys) -> None:
    """Redis memory by kind of key (the part of the name after the model), largest first."""
    families: dict[str, list[int]] = {}
    async for key in redis.scan_iter(match=f"{keys.prefix}:*", count=1000):
        name = key.decode()
        rest = name.split("}:", 1)[1] if "}:" in name else name.split(":", 1)[1]
        family = rest.split(":", 1)[0]
        entry = families.setdefault(family, [0, 0])
        entry[0] += 1
        entry[1] += int(await redis.memory_usage(key) or 0)
    print(
        "Redis memory by kind of key: "
        + ", ".join(
            f"{family} {count} keys {size / 2**20:.2f} MiB"
            for family, (count, size) in sorted(families.items(), key=lambda item: -item[1][1])
        )
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--rate", type=float, default=300, help="predictions per second")
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--label-share", type=float, default=0.9, help="predictions that get a label")
    args = parser.parse_args()
    duration = args.minutes * 60
    root = Path(tempfile.mkdtemp(prefix="aimon-soak-"))
    own = ScratchRedis(root)
    own.start()
    await own.wait_up()
    tag = uuid.uuid4().hex[:8]
    base = Settings()
    settings = Settings(
        kafka_bootstrap=base.kafka_bootstrap,
        redis_url=own.url,
        app_id=f"aimon-soak-{tag}",
        key_prefix=f"soak{tag}",
        topics=Topics(**{k: f"{v}-soak-{tag}" for k, v in Topics().model_dump().items()}),
        partitions=4,
        web_port=free_port(),
        evidence_dir=root / "evidence",
        kafka_session_timeout_s=6,
        redis_retry_max_s=2,
    )
    keys = Keys(settings.key_prefix)
    models = [f"soak-{i}" for i in range(args.models)]
    await ensure_topics(settings)
    worker = Worker(settings, root / "worker.log")
    worker.start()
    redis = Redis.from_url(own.url)
    sent = Sent()
    started = time.monotonic()
    producing = asyncio.create_task(
        produce(settings, models, args.rate, args.label_share, started + duration, sent)
    )
    faults: list[tuple[float, str]] = []
    samples: list[Sample] = []
    print(
        f"soak: {args.minutes:g} min, {args.rate:g} predictions/s over {args.models} models; files in {root}"
    )
    while not producing.done():
        at = time.monotonic() - started
        if not any(name == "worker kill -9" for _, name in faults) and at >= duration / 3:
            worker.kill()
            faults.append((at, "worker kill -9"))
            worker = Worker(settings.model_copy(update={"web_port": free_port()}), root / "worker2.log")
            worker.start()
        if not any(name == "Redis kill -9" for _, name in faults) and at >= 2 * duration / 3:
            own.kill()
            faults.append((at, "Redis kill -9"))
            await asyncio.sleep(5)
            own.start()
            await own.wait_up()
            await redis.aclose()
            redis = Redis.from_url(own.url)
        try:
            info = await redis.info("memory")
            size = await redis.dbsize()
            preds, _ = await counted(redis, keys, models)
            samples.append(
                Sample(
                    at, worker.rss_mib(), info["used_memory"] / 2**20, size, sent.total - sum(preds.values())
                )
            )
        except Exception as exc:  # Redis restarting: a gap in the samples
            print(f"  {at:7.0f}s sample skipped: {type(exc).__name__}")
        if len(samples) % 30 == 0 and samples:
            s = samples[-1]
            print(
                f"  {s.at:7.0f}s rss {s.rss_mib:6.1f} MiB  redis {s.redis_mib:6.1f} MiB  "
                f"keys {s.keys:6d}  behind {s.behind}"
            )
        await asyncio.sleep(SAMPLE_S)
    await producing
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        preds, labels = await counted(redis, keys, models)
        if sum(preds.values()) >= sent.total and sum(labels.values()) >= sum(sent.labels.values()):
            break
        await asyncio.sleep(2)
    await asyncio.sleep(5)  # anything counted twice shows now
    preds, labels = await counted(redis, keys, models)
    access = await access_counted(redis, keys)
    end = time.monotonic() - started
    report(samples, faults, end, args.rate)
    await memory_by_family(redis, keys)
    opened = await opened_incidents(redis, keys)
    print(f"incidents opened on this healthy traffic: {len(opened)}" + "".join(f"\n  {i}" for i in opened))
    exact = preds == sent.predictions and labels == sent.labels and access == sent.access
    print(
        f"predictions sent {sent.total}, in Redis {sum(preds.values())}; "
        f"labels sent {sum(sent.labels.values())}, matched in Redis {sum(labels.values())}; "
        f"access events sent {sent.access}, in Redis {access}"
    )
    if exact:
        print("EXACT: every count equals what was sent")
    else:
        wrong = {
            m: (sent.predictions.get(m), preds.get(m))
            for m in models
            if preds.get(m) != sent.predictions.get(m)
        }
        print(f"NOT EXACT: (sent, in Redis) by model {wrong}")
    worker.kill(signal.SIGTERM)
    await redis.aclose()
    own.kill()
    await delete_topics(settings)
    shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if exact else 1)


async def delete_topics(settings: Settings) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        ours = set(settings.topics.model_dump().values()) & set(await admin.list_topics())
        await asyncio.wait_for(admin.delete_topics(sorted(ours)), 30)
    finally:
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
