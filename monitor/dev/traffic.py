"""Synthetic prediction traffic for the demo, drills and tests (a generator plus a batching producer)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from monitor.topics import TOPIC_MAX_MESSAGE_BYTES

GROUPS = {
    "sex": ("F", "M"),
    "age_band": ("18-24", "25-34", "35-49", "50-64", "65+"),
    "zip3": ("941", "100", "606", "303", "787", "981"),
}


@dataclass(frozen=True)
class TrafficProfile:
    """How one model behaves: approval rate, error rate, latency (lognormal), flag rate."""

    model_id: str = "credit-scoring"
    model_version: str = "1.0.0"
    approval_rate: float = 0.6
    error_rate: float = 0.002
    latency_median_ms: float = 40.0
    latency_sigma: float = 0.35
    flag_rate: float = 0.0


def predictions(
    profile: TrafficProfile, *, seed: int = 0, start_s: float | None = None, rate_per_s: float = 0.0
) -> Iterator[dict[str, Any]]:
    """An endless stream of PredictionEvent dicts; `rate_per_s` > 0 spaces their timestamps."""
    rng = random.Random(seed)
    ts = time.time() if start_s is None else start_s
    n = 0
    while True:
        n += 1
        failed = rng.random() < profile.error_rate
        event: dict[str, Any] = {
            "model_id": profile.model_id,
            "model_version": profile.model_version,
            "request_id": f"{profile.model_id}-{seed}-{n}",
            "ts": ts,
            "latency_ms": round(rng.lognormvariate(0, profile.latency_sigma) * profile.latency_median_ms, 3),
            "groups": {attr: rng.choice(values) for attr, values in GROUPS.items()},
            "user_id": f"user-{rng.randrange(5000)}",
            "subject_id": f"subject-{rng.randrange(1_000_000)}",
        }
        if failed:
            event["error"] = "upstream_timeout"
        else:
            approved = rng.random() < profile.approval_rate
            event.update(
                prediction=int(approved), positive=approved, confidence=round(rng.uniform(0.5, 1.0), 3)
            )
        if profile.flag_rate and rng.random() < profile.flag_rate:
            event["flags"] = ["gibberish"]
        yield event
        if rate_per_s:
            ts += 1.0 / rate_per_s


class BatchingProducer:
    """Sends events as JSON arrays of at most `batch_size` (the reporter's wire format)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        batch_size: int = 100,
        kafka_options: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.batch_size = batch_size
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            linger_ms=5,
            max_request_size=TOPIC_MAX_MESSAGE_BYTES,
            **(kafka_options or {}),
        )

    async def __aenter__(self) -> BatchingProducer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, events: list[dict[str, Any]]) -> None:
        """Send the events in arrays; returns once the broker has them all."""
        futures = []
        for start in range(0, len(events), self.batch_size):
            chunk = events[start : start + self.batch_size]
            key = str(chunk[0].get("request_id", start)).encode()
            futures.append(await self._producer.send(self.topic, orjson.dumps(chunk), key=key))
        await asyncio.gather(*futures)
