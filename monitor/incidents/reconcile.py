"""Control `seq` that never goes back: after Redis restarts, the `control` topic is the record.

A model's control messages carry a `seq` that gateways use to drop stale or repeated messages. The
evaluator keeps the last one in Redis (`Keys.control`). If Redis lost its last writes (a crash of
its machine, with the append-only file fsynced once a second), a message already on the topic may
be missing there, and the next one would reuse its `seq`: every gateway would drop it as a repeat.

So whenever the evaluator finds Redis restarted (its `run_id` changed, or at the evaluator's first
tick), it reads each model's newest message from the compacted `control` topic and raises the
model's `seq`, level and last message in Redis to it where Redis is behind. Redis is never lowered.
It also puts back, from the audit topic, audit entries lost at the end of the Redis list (only
sealed originals that continue the chain), before a new entry could take a lost one's `seq`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from redis.asyncio import Redis

from monitor.events import ControlMessage
from monitor.incidents.store import IncidentStore

log = logging.getLogger(__name__)
_decoder = msgspec.json.Decoder(ControlMessage)

LatestControl = Callable[[], Awaitable[dict[str, ControlMessage]]]


class ControlReconciler:
    """Raises Redis's control state to the control topic's, once per Redis start."""

    def __init__(
        self,
        redis: Redis,
        store: IncidentStore,
        latest: LatestControl,
        *,
        restore_audit: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.redis = redis
        self.store = store
        self.latest = latest
        self.restore_audit = restore_audit
        self._restoring: asyncio.Future[None] | None = None
        self.run_id: str | None = None  # of the Redis last reconciled with

    async def check(self) -> list[str]:
        """Reconcile if Redis is not the one last reconciled with; the models whose state was raised."""
        info = await self.redis.info("server")
        run_id = str(info.get("run_id", ""))
        if run_id == self.run_id:
            return []
        raised = await self.reconcile(await self.latest())
        if self.restore_audit is not None and (self._restoring is None or self._restoring.done()):
            # In the background: a slow audit topic must not hold up detection.
            self._restoring = asyncio.ensure_future(self._restore(self.restore_audit))
        self.run_id = run_id
        return raised

    async def _restore(self, restore: Callable[[], Awaitable[int]]) -> None:
        try:
            restored = await restore()
        except Exception as exc:  # the audit topic unreadable: `audit verify` still names what is missing
            log.warning("audit: the lost tail was not checked against the audit topic: %r", exc)
            return
        if restored:
            log.warning(
                "audit: %d entr%s missing at the end of the Redis list (Redis lost its last writes) "
                "put back from the audit topic",
                restored,
                "y" if restored == 1 else "ies",
            )

    async def reconcile(self, latest: dict[str, ControlMessage]) -> list[str]:
        """Raise each model's control state in Redis to its newest message on the topic."""
        if not latest:
            return []
        states = await self.store.control_states(sorted(latest))
        raised = []
        for model_id, message in sorted(latest.items()):
            state = states[model_id]
            if message.seq <= state.seq:
                continue
            log.warning(
                "control: %s is at seq %d in Redis but seq %d (level %d) on the control topic: Redis lost "
                "its last writes; taking the topic's",
                model_id,
                state.seq,
                message.seq,
                message.level,
            )
            await self.store.stage_control(message)
            await self.store.control_published(message)
            raised.append(model_id)
        return raised


class TopicControlReader:
    """Each model's newest control message: the topic read from its start to its end with a
    consumer of its own (`monitor.topic_reader`)."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 30.0, **options: Any) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_s
        self.options = options

    async def __call__(self) -> dict[str, ControlMessage]:
        """model_id -> the message with the highest seq on the topic (none if there is no topic)."""
        from monitor.topic_reader import own_consumer, partitions, records

        consumer = own_consumer(self.bootstrap, **self.options)
        await consumer.start()
        latest: dict[str, ControlMessage] = {}
        try:
            tps = await partitions(consumer, self.topic) or []
            async for found in records(consumer, dict.fromkeys(tps), timeout_s=self.timeout_s):
                for record in found:
                    try:
                        message = _decoder.decode(record.value or b"")
                    except msgspec.DecodeError:  # a tombstone or a foreign value: no state to keep
                        continue
                    kept = latest.get(message.model_id)
                    if kept is None or message.seq > kept.seq:
                        latest[message.model_id] = message
        finally:
            await consumer.stop()
        log.info("control topic %s read to its end: %d models", self.topic, len(latest))
        return latest


__all__ = ["ControlReconciler", "TopicControlReader"]
