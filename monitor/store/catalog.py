"""The model catalog in Redis: which models exist, their versions, their frozen references, and the
records an incident's evidence quotes (recent events, offsets, deployments, approvals, access)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import orjson
from redis.asyncio import Redis

from monitor.aggregates.window import VersionWindows, WindowStats, sum_buckets
from monitor.store.impact import Affected, affected
from monitor.store.keys import Keys
from monitor.text import text

ACTIVE_S = 8 * 86_400  # a version with no prediction for this long is no longer evaluated
FROZEN_AT = "_frozen_at"  # a field of the frozen reference hash: when it was first frozen
FROZEN_TTL_S = 15 * 86_400


@dataclass
class ModelView:
    """What the evaluator knows of one model at one tick."""

    model_id: str
    last_event_s: float | None
    versions: list[str]  # active versions, oldest first (by first minute seen)
    predecessors: dict[str, list[str]]  # version -> earlier versions, newest first
    windows: dict[str, VersionWindows] = field(default_factory=dict)
    frozen: dict[str, WindowStats] = field(default_factory=dict)  # version -> frozen reference
    access: VersionWindows | None = None  # access-log and registry counters, if the model has any


@dataclass(frozen=True)
class FrozenReference:
    """A superseded version's reference as stored (None: never frozen) and when it was first frozen."""

    stats: WindowStats | None
    frozen_at: float


class ModelCatalog:
    """Reads (and, for frozen references, writes) what the evaluator knows of each model."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def models(self, now: float) -> tuple[list[ModelView], set[str]]:
        """Every model with any state, and which of them have access-log or registry events.

        A model known only from its incidents or its control state is still evaluated: people's
        commands for it are applied and its level is set (and exported) like any other's."""
        index = await read_model_index(self.redis, self.keys)
        access = set(index.access)
        ids = index.all
        async with self.redis.pipeline(transaction=False) as pipe:
            for model_id in ids:
                pipe.hget(self.keys.meta(model_id), "last_event_s")
                pipe.hgetall(self.keys.versions(model_id))
                pipe.hgetall(self.keys.first_seen(model_id))
            replies = iter(await pipe.execute())
        models = []
        for model_id in ids:
            last, newest, first = next(replies), next(replies), next(replies)
            order = sorted((float(first.get(v, newest[v])), text(v)) for v in newest)
            ordered = [v for _, v in order]
            active = [v for v in ordered if float(newest[v.encode()]) >= now - ACTIVE_S]
            predecessors = {v: list(reversed(ordered[:i])) for i, v in enumerate(ordered)}
            models.append(ModelView(model_id, None if last is None else float(last), active, predecessors))
        return models, access

    async def frozen_references(self, wanted: Sequence[tuple[str, str]]) -> list[FrozenReference]:
        """The frozen reference of each (model, version), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for model_id, version in wanted:
                pipe.hgetall(self.keys.reference(model_id, version))
            stored = await pipe.execute()
        found = []
        for raw in stored:
            fields: dict[str | bytes, str | bytes] = {text(k): v for k, v in raw.items()}
            frozen_at = float(fields.pop(FROZEN_AT, 0) or 0)
            stats = WindowStats.from_counters(sum_buckets([fields])) if fields else None
            found.append(FrozenReference(stats, frozen_at))
        return found

    async def freeze(self, references: Sequence[tuple[str, str, Mapping[str, int], float]]) -> None:
        """Replace each (model, version, reference counters, first frozen at) frozen reference."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for model_id, version, counters, frozen_at in references:
                key = self.keys.reference(model_id, version)
                pipe.delete(key)
                mapping: dict[str | bytes, str | int | float] = dict(counters.items())
                mapping[FROZEN_AT] = frozen_at
                pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]  # redis-py's Mapping is invariant
                pipe.expire(key, FROZEN_TTL_S)
            await pipe.execute()

    async def detection_context(
        self, model_id: str, deployments: int = 20
    ) -> tuple[list[bytes], dict[str, int], list[dict[str, Any]]]:
        """(newest raw prediction events, Kafka offsets, newest `deployments` deployments), at once."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(self.keys.recent_predictions(model_id), 0, -1)
            pipe.hgetall(self.keys.offsets(model_id))
            pipe.lrange(self.keys.deployments(model_id), 0, deployments - 1)
            recent, offsets, deployed = await pipe.execute()
        return recent, {text(k): int(v) for k, v in offsets.items()}, [orjson.loads(d) for d in deployed]

    async def deployments(self, model_id: str) -> list[dict[str, Any]]:
        """Every deployment record kept for the model, newest first."""
        return [orjson.loads(d) for d in await self.redis.lrange(self.keys.deployments(model_id), 0, -1)]

    async def approvals(self, model_id: str) -> dict[str, dict[str, Any]]:
        """Approved artifacts: "version|sha256" -> the approval record."""
        raw = await self.redis.hgetall(self.keys.approvals(model_id))
        return {text(k): orjson.loads(v) for k, v in raw.items()}

    async def unapproved_event(self, model_id: str, version: str, sha256: str) -> dict[str, Any] | None:
        """The first registry event that showed this unapproved artifact, if it was kept."""
        seen = await self.redis.hget(self.keys.tampered(model_id), f"{version}|{sha256}")
        return orjson.loads(seen) if seen else None

    async def recent_access(self, model_id: str) -> list[dict[str, Any]]:
        """The newest access-log records kept for the model."""
        return [orjson.loads(r) for r in await self.redis.lrange(self.keys.recent_access(model_id), 0, -1)]

    async def affected(
        self, model_id: str, version: str, prefix: str, start_s: float, end_s: float
    ) -> Affected:
        """The kept unfavourable decisions of one group of one version in a window."""
        return await affected(self.redis, self.keys, model_id, version, prefix, start_s, end_s)


@dataclass(frozen=True, slots=True)
class ModelIndex:
    """The model ids each kind of state is indexed under; a model may be in several."""

    predictions: frozenset[str]
    access: frozenset[str]  # access-log or registry events (both are evaluated as the access "version")
    incidents: frozenset[str]
    control: frozenset[str]  # a control message was staged, or a person set an override

    @property
    def all(self) -> list[str]:
        """Every model with any state, sorted."""
        return sorted(self.predictions | self.access | self.incidents | self.control)

    def sources(self, model_id: str) -> list[ModelSource]:
        """The kinds of state the model has (empty: an unknown model)."""
        return [
            name
            for name, ids in zip(
                MODEL_SOURCES, (self.predictions, self.access, self.incidents, self.control), strict=True
            )
            if model_id in ids
        ]


ModelSource = Literal["predictions", "access", "incidents", "control"]
MODEL_SOURCES: tuple[ModelSource, ...] = get_args(ModelSource)


def _model_indexes(keys: Keys) -> tuple[str, str, str, str]:
    """The index sets, in the order of MODEL_SOURCES: every kind of per-model state has one."""
    return keys.models(), keys.access_models(), keys.incident_model_ids(), keys.controlled_models()


async def read_model_index(redis: Redis, keys: Keys) -> ModelIndex:
    """Read every model index in one round trip: the one place that says which models exist."""
    async with redis.pipeline(transaction=False) as pipe:
        for name in _model_indexes(keys):
            pipe.smembers(name)
        predictions, access, incidents, control = await pipe.execute()
    return ModelIndex(
        *(frozenset(text(m) for m in members) for members in (predictions, access, incidents, control))
    )


async def model_sources(redis: Redis, keys: Keys, model_id: str) -> list[ModelSource]:
    """The kinds of state one model has, without reading whole indexes (empty: an unknown model)."""
    async with redis.pipeline(transaction=False) as pipe:
        for name in _model_indexes(keys):
            pipe.sismember(name, model_id)
        found = await pipe.execute()
    return [source for source, present in zip(MODEL_SOURCES, found, strict=True) if present]
