"""The Faust side of ingest: one agent per inbound topic, each handing its batches to an ingestor."""

from __future__ import annotations

from typing import Any, cast

import faust

from monitor.agents.ingest import BatchIngestor, RawMessage


def register_ingest_agent(
    app: faust.App, topic: faust.TopicT, ingestor: BatchIngestor[Any], *, max_events: int, within_s: float
) -> None:
    """Consume `topic` in batches of up to `max_events` messages (or what came within `within_s`)."""

    async def ingest(stream: faust.StreamT[bytes]) -> None:
        # take_events exists on Stream but faust's StreamT protocol does not declare it
        batches = cast(faust.Stream[bytes], stream).take_events(max_events, within=within_s)
        async for events in batches:
            # Offsets are acked when the next batch is asked for, i.e. only after this one is
            # in Redis: a crash before that replays it, and the replay guard skips what was applied.
            await ingestor.handle([_raw(event) for event in events])

    app.agent(topic, name=f"ingest-{ingestor.topic}")(ingest)


def _raw(event: faust.EventT[bytes]) -> RawMessage:
    message = event.message
    return RawMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
    )
