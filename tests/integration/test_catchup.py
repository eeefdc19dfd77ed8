"""The catch-up hold on a real worker: a backlog of healthy traffic is not a fleet of dead models.

An hour of healthy traffic for several models (record timestamps = event times) is on the topic
before the worker starts, plus one model that stopped 40 minutes ago. While the worker consumes the
backlog, every model's newest applied event lags the clock by up to an hour; the downtime rule must
hold until the worker is caught up, and then fire for the stopped model only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from monitor.aggregates.lag import PartitionProgress
from monitor.aggregates.predictions import Located
from monitor.catchup import SilenceHold
from monitor.events import PredictionEvent
from monitor.incidents.store import IncidentStore
from monitor.rules.catchup import judge
from monitor.store.keys import Keys
from monitor.store.lag import LagStore
from monitor.topics import ensure_topics
from tests.conftest import WorkerProcess, unique_settings
from tests.integration.conftest import World

pytestmark = pytest.mark.integration

HEALTHY = [f"healthy-{i}" for i in range(5)]
STOPPED = "stopped-40m-ago"
PER_SECOND = 2.0  # events per model per second of event time


def backlog(now: float) -> Iterator[tuple[float, str, bytes]]:
    """(event time, request id, value) of the hour before `now`, oldest first."""
    events = []
    for model in [*HEALTHY, STOPPED]:
        end = now - 40 * 60 if model == STOPPED else now - 1
        n = int((end - (now - 3600)) * PER_SECOND)
        for i in range(n):
            ts = now - 3600 + i / PER_SECOND
            rid = f"{model}-{i}"
            value = {
                "model_id": model,
                "model_version": "1",
                "request_id": rid,
                "ts": ts,
                "prediction": 1,
                "positive": True,
                "latency_ms": 30.0,
                "user_id": f"u{i % 200}",
            }
            events.append((ts, rid, orjson.dumps(value)))
    events.sort()
    yield from events


async def test_a_backlog_opens_no_downtime_and_a_stopped_model_is_caught_once_caught_up(
    services: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Small batches throttle the worker, so catching up takes seconds and the evaluator ticks
    # many times while it is behind.
    settings = unique_settings(*services, batch_max_events=20)
    await ensure_topics(settings)
    now = time.time()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20)
    await producer.start()
    try:
        sent = 0
        for ts, rid, value in backlog(now):
            await producer.send(
                settings.topics.predictions, value, key=rid.encode(), timestamp_ms=int(ts * 1000)
            )
            sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    assert sent > 30_000

    keys = Keys(settings.key_prefix)
    redis = Redis.from_url(settings.redis_url)
    lag = LagStore(redis, keys)
    incidents = IncidentStore(redis, keys)
    worker = WorkerProcess(settings, tmp_path_factory.mktemp("catchup") / "worker.log")
    worker.start()
    try:
        await worker.wait_ready()
        held_report_at = 0.0  # newest report that said "hold" (behind past the tolerance, or unknown)
        saw_lag_s = 0.0
        saw_delay_metric = 0.0
        caught_up_at: float | None = None
        stopped_incident = None
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            reports = await lag.read(settings.topics.predictions)
            decision = judge(reports, range(settings.partitions), time.time(), watching_since=now)
            for report in reports.values():
                if report.lag_s is not None:
                    saw_lag_s = max(saw_lag_s, report.lag_s)
                if _holds(report, settings.caught_up_within_s):
                    held_report_at = max(held_report_at, report.at)
            if not decision.held and caught_up_at is None:
                caught_up_at = time.time()
            saw_delay_metric = max(saw_delay_metric, await worker.metric("aimon_detection_delay_seconds"))
            every = await incidents.recent(1000)
            downtime = [i for i in every if i.rule == "downtime"]
            assert not [i for i in downtime if i.model_id in HEALTHY], (
                [(i.model_id, i.observation) for i in downtime],
                worker.log_tail(),
            )
            stopped_incident = next((i for i in downtime if i.model_id == STOPPED), None)
            if stopped_incident is not None and caught_up_at is not None:
                break
            await asyncio.sleep(0.2)
        assert stopped_incident is not None, worker.log_tail()
        assert caught_up_at is not None
        # The worker really was behind: by tens of minutes, as the record timestamps say.
        assert saw_lag_s > 15 * 60, saw_lag_s
        assert saw_delay_metric > 60, saw_delay_metric
        # Downtime opened only after the last report that still held the silence rules.
        assert stopped_incident.opened_at > held_report_at, (stopped_incident.opened_at, held_report_at)
        assert stopped_incident.observation["value"] >= 40 * 60 - 5
        # Caught up, the healthy models stay quiet a while longer (and every partition is current).
        await asyncio.sleep(3)
        every = await incidents.recent(1000)
        assert sorted({(i.model_id, i.rule) for i in every}) == [(STOPPED, "downtime")], worker.log_tail()
        assert "detection delayed:" in worker.log_path.read_text()
        assert "detection caught up" in worker.log_path.read_text()
        assert await worker.metric("aimon_silence_rules_held") == 0
        assert await worker.metric("aimon_detection_delay_seconds") < settings.caught_up_within_s
    finally:
        worker.stop()
        await redis.aclose()


def _holds(report: PartitionProgress, within_s: float) -> bool:
    return report.behind is not False and (report.lag_s is None or report.lag_s >= within_s)


async def test_while_behind_an_open_downtime_is_neither_refired_nor_resolved(world: World) -> None:
    """The evaluator side alone, on an injected clock: reports are written as a worker would."""
    keys = Keys(f"cu{time.time_ns() % 10**9}")
    store = world.store(keys)
    lag = LagStore(world.redis, keys)
    clock = [time.time()]
    last = clock[0] - 40 * 60
    events = [
        PredictionEvent(
            model_id="m-held", model_version="1", request_id=f"r{i}", ts=last - 600 + i, prediction=1
        )
        for i in range(600)
    ]
    await store.apply_predictions("predictions", [Located(e, 0, i) for i, e in enumerate(events)])
    hold = SilenceHold(lag, "predictions", lambda: 2)
    ev = world.evaluator(keys, lambda: clock[0], silence_hold=hold)

    async def at(lags: list[float | None]) -> None:
        await lag.write(
            "predictions",
            [PartitionProgress(p, 1, None, 5, lag_s != 0, lag_s, clock[0]) for p, lag_s in enumerate(lags)],
        )

    await at([0.0, 2400.0])  # one partition 40 minutes behind
    report = await ev.tick()
    assert report.silence_held and report.detection_delay_s == 2400.0 and report.opened == []
    await at([0.0, 0.0])
    report = await ev.tick()
    assert not report.silence_held and [i.rule for i in report.opened] == ["downtime"]
    incident = report.opened[0]
    # The model sends again, but the monitor falls behind: the open incident is left as it is ...
    await store.apply_predictions(
        "predictions",
        [
            Located(
                PredictionEvent(
                    model_id="m-held", model_version="1", request_id="back", ts=clock[0], prediction=1
                ),
                0,
                1000,
            )
        ],
    )
    for _ in range(1, 11):
        clock[0] += 60
        await at([0.0, None])  # lag unknown on partition 1
        report = await ev.tick()
        assert report.silence_held and report.resolved == [] and report.updated == []
    (still,) = (await ev.incidents.open_incidents(["m-held"]))["m-held"]
    assert still.id == incident.id and still.status == "open" and still.clear_since is None
    # ... and judged again once caught up: inside, so the hold period starts now.
    clock[0] = still.opened_at + 11 * 60 + 1  # within 30 min of the new event: the model is back
    await at([0.0, 0.0])
    report = await ev.tick()
    assert not report.silence_held and report.resolved == []
    (again,) = (await ev.incidents.open_incidents(["m-held"]))["m-held"]
    assert again.clear_since == clock[0]
