"""The audit log in Redis: sealed entries appended to one list, each also published to the anchor."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from monitor.audit.chain import GENESIS, Verification, check_seal, seal, verify_chain
from monitor.store.keys import Keys

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 5.0

# Raise the anchored mark, never lower it: two appenders may finish their publishes out of order.
_RAISE_MARK = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return current
"""


class Anchor(Protocol):
    """Where each entry is also written, out of reach of whoever can write Redis (the `audit` topic)."""

    async def publish(self, entry: dict[str, Any], raw: bytes) -> None:
        """Store one entry durably (acknowledged by every in-sync replica) before returning."""
        ...


class AuditLog:
    """The audit log (a Redis list); appends are serialised with WATCH so the chain never forks."""

    def __init__(self, redis: Redis, keys: Keys, *, secret: bytes, anchor: Anchor | None = None) -> None:
        self.redis = redis
        self.key = keys.audit()
        self.mark = keys.audit_anchored()
        self.secret = secret
        self.anchor = anchor
        # One publisher at a time per process: appenders that overlap would each re-send the other's
        # entry (harmless, verify reads a re-sent record as the same one, but twice the records).
        self._publishing = asyncio.Lock()

    async def append(
        self, *, at: float, who: str, action: str, target: str, why: str, **details: Any
    ) -> dict[str, Any]:
        """Record one action; returns the stored entry with its seal.

        The entry is in Redis when this returns; it is on the anchor too unless the publish failed
        (logged), in which case the next append re-sends it first.
        """
        entry = await self._append_to_redis(
            {"at": at, "who": who, "action": action, "target": target, "why": why, "details": details}
        )
        if self.anchor is not None:
            async with self._publishing:
                await self.anchor_pending(entry["seq"])
        return entry

    async def _append_to_redis(self, body: dict[str, Any]) -> dict[str, Any]:
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.key)
                    last = await pipe.lindex(self.key, -1)
                    head = orjson.loads(last) if last else None
                    # The next seq follows the last entry's, not the list's length: a list cut short
                    # must not be continued with seqs that the anchor already holds for other entries.
                    seq = head["seq"] + 1 if head else 0
                    entry = seal({"seq": seq, **body, "prev": head["hash"] if head else GENESIS}, self.secret)
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                    pipe.rpush(self.key, orjson.dumps(entry))
                    await pipe.execute()
                    return entry
                except WatchError:
                    continue  # another writer appended first: link to its entry instead

    async def anchor_pending(self, upto: int) -> int:
        """Publish the entries after the anchored mark up to seq `upto`; returns how many were sent."""
        if self.anchor is None:
            return 0
        mark = int(await self.redis.get(self.mark) or -1)
        start = mark + 1
        if mark >= upto:
            # The topic already has an entry of this seq: Redis lost (or someone removed) its newest
            # entries and this append took a lost one's seq. Publish it all the same, so that the topic
            # keeps both and verify names the lost one; the mark stays where the topic is.
            log.error(
                "audit entry %s takes the seq of an entry already on the audit topic (anchored up to %s): "
                "the newest audit entries are gone from Redis; `monitor audit verify` names them",
                upto,
                mark,
            )
            start = upto
        sent = 0
        # The list is never trimmed, so index = seq.
        for raw in await self.redis.lrange(self.key, start, upto):
            entry = orjson.loads(raw)
            try:
                # Bounded: with Kafka away, a person's command waits this long, not the producer's timeouts.
                await asyncio.wait_for(self.anchor.publish(entry, _as_bytes(raw)), PUBLISH_TIMEOUT_S)
            except Exception as exc:  # the action stands: it is in Redis, the next append re-sends it
                log.warning(
                    "audit entry %s not anchored yet: %s: %s", entry.get("seq"), type(exc).__name__, exc
                )
                break
            await self.redis.eval(_RAISE_MARK, 1, self.mark, entry["seq"])
            sent += 1
        return sent

    async def raw_entries(self) -> list[bytes]:
        """Every stored item as it is, oldest first."""
        return [_as_bytes(raw) for raw in await self.redis.lrange(self.key, 0, -1)]

    async def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first."""
        return [orjson.loads(raw) for raw in await self.raw_entries()]

    async def verify(
        self, anchor: list[dict[str, Any]] | None = None, *, redis_started_at: float | None = None
    ) -> Verification:
        """Check every seal and link, and the chain against `anchor`'s entries when given."""
        return verify_chain(await self.raw_entries(), self.secret, anchor, redis_started_at=redis_started_at)

    async def restore(self, anchor: list[dict[str, Any]]) -> int:
        """Append the anchored entries that continue the chain past Redis's end; returns how many.

        Only entries that link to the current head and whose seal holds are put back (they are the
        originals, byte for byte), so a restore can never write anything the monitor did not seal.
        """
        restored = 0
        by_seq = {e["seq"]: e for e in anchor if isinstance(e.get("seq"), int)}
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                await pipe.watch(self.key)
                last = await pipe.lindex(self.key, -1)
                head = orjson.loads(last) if last else None
                nxt = by_seq.get(head["seq"] + 1 if head else 0)
                if nxt is None or nxt.get("prev") != (head["hash"] if head else GENESIS):
                    return restored
                if check_seal(nxt, self.secret) is not None:
                    return restored
                pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                pipe.rpush(self.key, orjson.dumps(nxt))
                try:
                    await pipe.execute()
                except WatchError:
                    continue
                restored += 1


def _as_bytes(raw: bytes | str) -> bytes:
    # The client is made without decode_responses, so Redis answers bytes; the stubs allow str too.
    return raw.encode() if isinstance(raw, str) else raw
