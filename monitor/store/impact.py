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
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(keys.unfavourable(model_id), start_s, end_s)
        pipe.hgetall(keys.shapes(model_id))
        members, shapes = await pipe.execute()
    # The shapes of this version that include the group: a member names its shape by id.
    wanted = set()
    for shape, body in shapes.items():
        shape_version, prefixes = orjson.loads(body)
        if shape_version == version and prefix in prefixes:
            wanted.add(shape.decode() if isinstance(shape, bytes) else shape)
    request_ids: list[str] = []
    subjects: dict[str, None] = {}
    for member in members:
        if not isinstance(member, (bytes, str)):
            continue
        shape, request_id, subject_id = orjson.loads(member)
        if shape in wanted:
            request_ids.append(request_id)
            if subject_id:
                subjects[subject_id] = None
    return Affected(request_ids, list(subjects))
