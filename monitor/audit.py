"""The append-only audit log: every human action, each entry chained to the previous by SHA-256.

An entry's hash covers its content and the previous entry's hash, so editing, removing or
reordering any entry breaks every hash after it; `verify` finds the first broken link.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from monitor.store.keys import Keys

GENESIS = "0" * 64


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of an entry's canonical JSON (sorted keys), its own `hash` field left out."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Verification:
    """The result of checking the chain."""

    entries: int
    ok: bool
    first_bad: int | None = None  # index of the first entry whose hash or link is wrong
    problem: str = ""


class AuditLog:
    """The audit log in Redis (a list); appends are serialised with WATCH so the chain never forks."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.key = keys.audit()

    async def append(
        self, *, at: float, who: str, action: str, target: str, why: str, **details: Any
    ) -> dict[str, Any]:
        """Record one action; returns the stored entry with its hash."""
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.key)
                    last = await pipe.lindex(self.key, -1)
                    prev = orjson.loads(last)["hash"] if last else GENESIS
                    seq = await pipe.llen(self.key)
                    entry = {
                        "seq": seq,
                        "at": at,
                        "who": who,
                        "action": action,
                        "target": target,
                        "why": why,
                        "details": details,
                        "prev": prev,
                    }
                    entry["hash"] = entry_hash(entry)
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                    pipe.rpush(self.key, orjson.dumps(entry))
                    await pipe.execute()
                    return entry
                except WatchError:
                    continue  # another writer appended first: link to its entry instead

    async def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first."""
        return [orjson.loads(raw) for raw in await self.redis.lrange(self.key, 0, -1)]

    async def verify(self) -> Verification:
        """Recompute every hash and link."""
        return verify_chain(await self.entries())


def verify_chain(entries: list[dict[str, Any]]) -> Verification:
    """Check a list of entries (pure): order, links and hashes."""
    prev = GENESIS
    for index, entry in enumerate(entries):
        if entry.get("seq") != index:
            return Verification(len(entries), False, index, f"entry {index} has seq {entry.get('seq')}")
        if entry.get("prev") != prev:
            return Verification(
                len(entries), False, index, f"entry {index} does not link to entry {index - 1}"
            )
        if entry_hash(entry) != entry.get("hash"):
            return Verification(len(entries), False, index, f"entry {index} was changed after it was written")
        prev = entry["hash"]
    return Verification(len(entries), True)
