"""The Faust side of ingest: one agent per inbound topic, each handing its batches to an ingestor."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import faust

from monitor.agents.ingest import BatchIngestor, RawMessage
from monitor.agents.lag import AppliedTracker
from monitor.metrics import CatchUpMetrics
from monitor.store.lag import LagStore
from monitor.store.redis import TRANSIENT

log = logging.getLogger(__name__)


def register_ingest_agent(
    app: faust.App,
    topic: faust.TopicT,
    ingestor: BatchIngestor[Any],
    *,
    max_events: int,
    within_s: float,
    tracker: AppliedTracker | None = None,
) -> None:
    """Consume `topic` in batches of up to `max_events` messages (or what came within `within_s`)."""

    async def ingest(stream: faust.StreamT[bytes]) -> None:
        # take_events exists on Stream but faust's StreamT protocol does not declare it
        batches = cast(faust.Stream[bytes], stream).take_events(max_events, within=within_s)
        async for events in batches:
            # Offsets are acked when the next batch is asked for, i.e. only after this one is
            # in Redis: a crash before that replays it, and the replay guard skips what was applied.
            raws = [_raw(event) for event in events]
            await ingestor.handle(raws)
            if tracker is not None:
                tracker.applied(raws)

    app.agent(topic, name=f"ingest-{ingestor.topic}")(ingest)
    recovery = ingestor.recovery
    if recovery is not None:

        async def forget_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            revoked: set[Any] = args[0] if args else set()
            recovery.finder.forget(tp.partition for tp in revoked if tp.topic == ingestor.topic)

        app.on_partitions_revoked.connect(forget_revoked)


def register_progress_reports(
    app: faust.App,
    tracker: AppliedTracker,
    store: LagStore,
    metrics: CatchUpMetrics,
    *,
    interval_s: float = 1.0,
    clock: Callable[[], float] = time.time,
) -> None:
    """Every `interval_s`, on every worker, report its partitions of the tracker's topic to Redis,
    whether or not batches arrive (a stale report means "behind, lag unknown" to the evaluator)."""
    topic = tracker.topic
    reported: set[int] = set()

    async def forget_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[Any] = args[0] if args else set()
        tracker.forget(tp.partition for tp in revoked if tp.topic == topic)

    app.on_partitions_revoked.connect(forget_revoked)

    @app.timer(interval_s)  # type: ignore[untyped-decorator]  # faust's decorators are not annotated
    async def report_progress() -> None:
        consumer = app.consumer
        owned = {tp.partition: tp for tp in consumer.assignment() if tp.topic == topic}
        # Faust keeps the group's committed offsets (Kafka's meaning: the next offset to read) only
        # in this attribute; without it a partition with nothing new reads as "cannot tell".
        committed: Mapping[Any, int | None] = getattr(consumer, "_committed_offset", {})

        def highwater(partition: int) -> int | None:
            try:
                return cast(int | None, consumer.highwater(owned[partition]))
            except (AssertionError, KeyError):  # revoked meanwhile
                return None

        reports = tracker.reports(
            owned, highwater=highwater, committed=lambda p: committed.get(owned[p]), now=clock()
        )
        known = {r.partition: r.lag_s for r in reports if r.lag_s is not None}
        for gone in reported - set(known):
            metrics.consumer_lag.remove(topic, str(gone))
        reported.clear()
        reported.update(known)
        for partition, lag_s in known.items():
            metrics.consumer_lag.labels(topic, str(partition)).set(lag_s)
        try:
            await store.write(topic, reports)
        except TRANSIENT as exc:
            log.warning("consumer progress not reported: Redis unavailable (%s)", exc)


def _raw(event: faust.EventT[bytes]) -> RawMessage:
    message = event.message
    return RawMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp=message.timestamp,
    )
