"""Who was affected: the unfavourable decisions kept for bias incidents (see predictions.lua)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from redis.asyncio import Redis

from monitor.store.keys import Keys


@dataclass(frozen=True)
class Affected:
    """Unfavourable decisions of one group of one version in a window, as far as they were kept."""

    request_ids: list[str]
    subject_ids: list[str]  # distinct, in order of first appearance


async def affected(
    redis: Redis, keys: Keys, model_id: str, version: str, prefix: str, start_s: float, end_s: float
) -> Affected:
    """The kept unfavourable decisions of the group whose field prefix is `prefix`."""
    members = await redis.zrangebyscore(keys.unfavourable(model_id), start_s, end_s)
    request_ids: list[str] = []
    subjects: dict[str, None] = {}
    for member in members:
        if not isinstance(member, (bytes, str)):
            continue
        request_id, subject_id, member_version, prefixes = orjson.loads(member)
        if member_version == version and prefix in prefixes:
            request_ids.append(request_id)
            if subject_id:
                subjects[subject_id] = None
    return Affected(request_ids, list(subjects))
