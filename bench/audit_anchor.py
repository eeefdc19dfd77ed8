"""The cost of anchoring every audit entry on Kafka: append latency with and without the publish.

Issue 14: "every entry (or the chain head at least every few seconds) is also written to a Kafka
`audit` topic". Per entry is what `AuditLog.append` does, and the API waits for it; this measures
what that costs a person's command, so the choice stands on a number.

N appends one after another (as the API makes them: one command, one entry), each timed from the call
to the return, (a) Redis only, (b) Redis + the publish to the audit topic with acks=all by an
idempotent producer (already connected: the first publish of a worker also connects, timed apart),
on the local single-broker Kafka and Redis. Then the same with C concurrent appenders, to see the
WATCH retries and the producer under contention. Median, p99 and max in ms.

Usage: .venv/bin/python bench/audit_anchor.py [--entries 500] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr
from redis.asyncio import Redis

from monitor.audit import AuditLog
from monitor.audit.anchor import KafkaAnchor
from monitor.settings import Settings, Topics
from monitor.store.keys import Keys
from monitor.topics import ensure_topics


async def timed_appends(log: AuditLog, n: int, concurrency: int) -> list[float]:
    """Latency in ms of n appends made by `concurrency` writers at once."""
    times: list[float] = []

    async def writer(k: int) -> None:
        for i in range(k, n, concurrency):
            start = time.perf_counter()
            await log.append(
                at=time.time(),
                who="human:bench",
                action="acknowledge",
                target=f"INC-{i}",
                why="bench",
                command=str(i),
            )
            times.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(writer(k) for k in range(concurrency)))
    return times


def summary(name: str, times: list[float]) -> str:
    q = statistics.quantiles(times, n=100)
    return f"| {name} | {len(times)} | {statistics.median(times):.2f} | {q[98]:.2f} | {max(times):.2f} |"


async def main(entries: int, concurrency: int) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        key_prefix=f"bench-audit-{tag}",
        topics=Topics(audit=f"audit-bench-{tag}"),
        audit_secret=SecretStr("bench-secret-0123456789abcdef"),
    )
    await ensure_topics(settings)
    redis = Redis.from_url(settings.redis_url)
    secret = settings.audit_secret.get_secret_value().encode()  # type: ignore[union-attr]
    anchor = KafkaAnchor(settings.kafka_bootstrap, settings.topics.audit)
    rows = ["| appends | entries | median ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    try:
        for c in (1, concurrency):
            plain = AuditLog(redis, Keys(f"{settings.key_prefix}-plain-{c}"), secret=secret)
            rows.append(summary(f"Redis only, {c} writer(s)", await timed_appends(plain, entries, c)))
            anchored = AuditLog(
                redis, Keys(f"{settings.key_prefix}-anchored-{c}"), secret=secret, anchor=anchor
            )
            if c == 1:
                first = await timed_appends(anchored, 1, 1)
                rows.append(summary("first anchored append (connects the producer)", first * 2))
            rows.append(
                summary(f"Redis + audit topic, {c} writer(s)", await timed_appends(anchored, entries, c))
            )
    finally:
        await anchor.stop()
        keys = [k async for k in redis.scan_iter(f"{settings.key_prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
    print(f"Kafka {settings.kafka_bootstrap}, Redis {settings.redis_url}")
    print("\n".join(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.entries, args.concurrency))
