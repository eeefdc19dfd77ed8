"""Incidents and escalation state in Redis, so a restarted or new leader carries on where it was.

Publishing uses an outbox: an incident event or control message is written to Redis first, then
published, then struck from the outbox. A crash in between publishes it again (at least once;
consumers key on incident id + event and on `seq`), and nothing is ever lost.
"""

from __future__ import annotations

import msgspec
from redis.asyncio import Redis

from monitor.control import ControlState
from monitor.events import ControlMessage
from monitor.incidents.incident import Incident
from monitor.store.keys import Keys
from monitor.text import text

_incident_decoder = msgspec.json.Decoder(Incident)
SCAN_PAGE = 500  # index entries read per round trip while a filtered listing looks for matches
_control_decoder = msgspec.json.Decoder(ControlMessage)


class IncidentStore:
    """Reads and writes incidents and control state."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def open_incidents(self, model_ids: list[str]) -> dict[str, list[Incident]]:
        """Every model's incidents that are not resolved."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for model_id in model_ids:
                pipe.hvals(self.keys.open_incidents(model_id))
            id_lists = await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for model_id, ids in zip(model_ids, id_lists, strict=True):
                for incident_id in ids:
                    pipe.get(self.keys.incident(model_id, text(incident_id)))
            raw = iter(await pipe.execute())
        result: dict[str, list[Incident]] = {}
        for model_id, ids in zip(model_ids, id_lists, strict=True):
            incidents = [_incident_decoder.decode(value) for value in (next(raw) for _ in ids) if value]
            result[model_id] = incidents
        return result

    async def get(self, model_id: str, incident_id: str) -> Incident | None:
        """One incident, open or not."""
        raw = await self.redis.get(self.keys.incident(model_id, incident_id))
        return None if raw is None else _incident_decoder.decode(raw)

    async def find(self, incident_id: str) -> Incident | None:
        """One incident by id alone."""
        model_id = await self.redis.hget(self.keys.incident_models(), incident_id)
        return None if model_id is None else await self.get(text(model_id), incident_id)

    async def recent(
        self, limit: int = 100, *, status: str | None = None, model_id: str | None = None
    ) -> list[Incident]:
        """The newest `limit` incidents with this status and model (None: any), newest first.

        The filters are applied before the limit: the index is read newest first in pages until
        `limit` incidents match or it ends, so an old open incident is found behind newer ones.
        """
        found: list[Incident] = []
        page = max(limit, SCAN_PAGE)
        start = 0
        while len(found) < limit:
            pairs = await self._index_page(start, page)
            start += page
            wanted = [(m, i) for m, i in pairs if model_id is None or m == model_id]
            if wanted:
                raw = await self.redis.mget([self.keys.incident(m, i) for m, i in wanted])
                decoded = (_incident_decoder.decode(value) for value in raw if value)
                found.extend(i for i in decoded if status is None or i.status == status)
            if len(pairs) < page:
                break
        return found[:limit]

    async def save(self, incidents: list[Incident]) -> None:
        """Write incidents and keep the open-incident and listing indexes in step."""
        if not incidents:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for incident in incidents:
                m = incident.model_id
                pipe.set(self.keys.incident(m, incident.id), msgspec.json.encode(incident))
                if incident.is_open:
                    pipe.hset(self.keys.open_incidents(m), incident.dedup_key, incident.id)
                else:
                    pipe.hdel(self.keys.open_incidents(m), incident.dedup_key)
                pipe.zadd(self.keys.incident_index(), {f"{m}|{incident.id}": incident.opened_at})
                pipe.hset(self.keys.incident_models(), incident.id, m)
            pipe.sadd(self.keys.incident_model_ids(), *{i.model_id for i in incidents})
            await pipe.execute()

    async def list_ids(self, limit: int = 100) -> list[tuple[str, str]]:
        """(model_id, incident id) of the newest incidents, newest first."""
        return await self._index_page(0, limit)

    async def _index_page(self, start: int, count: int) -> list[tuple[str, str]]:
        members = await self.redis.zrevrange(self.keys.incident_index(), start, start + count - 1)
        pairs = [text(m).split("|", 1) for m in members if isinstance(m, (str, bytes))]
        return [(model_id, incident_id) for model_id, incident_id in pairs]

    async def control_states(self, model_ids: list[str]) -> dict[str, ControlState]:
        """Every model's escalation state (a model never escalated is at level 0, seq 0)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for model_id in model_ids:
                pipe.hgetall(self.keys.control(model_id))
            replies = await pipe.execute()
        states = {}
        for model_id, raw in zip(model_ids, replies, strict=True):
            fields = {text(k): v for k, v in raw.items()}
            states[model_id] = ControlState(
                seq=int(fields.get("seq", 0)),
                level=int(fields.get("level", 0)),
                override=int(fields["override"]) if fields.get("override") not in (None, b"") else None,
                pending=_control_decoder.decode(fields["pending"]) if fields.get("pending") else None,
                last=_control_decoder.decode(fields["last"]) if fields.get("last") else None,
            )
        return states

    async def stage_control(self, message: ControlMessage) -> None:
        """Record a new control message (seq and level) before it is published."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(
                self.keys.control(message.model_id),
                mapping={"seq": message.seq, "level": message.level, "pending": msgspec.json.encode(message)},
            )
            pipe.sadd(self.keys.controlled_models(), message.model_id)
            await pipe.execute()

    async def control_published(self, message: ControlMessage) -> None:
        """Strike a control message from the outbox and keep it as the last one sent."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(self.keys.control(message.model_id), "pending")
            pipe.hset(self.keys.control(message.model_id), "last", msgspec.json.encode(message))
            await pipe.execute()

    async def quiet(self, model_ids: list[str]) -> dict[str, dict[str, float]]:
        """Per model, the incident keys a person resolved and until when they stay closed."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for model_id in model_ids:
                pipe.hgetall(self.keys.quiet(model_id))
            replies = await pipe.execute()
        return {
            model_id: {text(k): float(v) for k, v in raw.items()}
            for model_id, raw in zip(model_ids, replies, strict=True)
        }

    async def keep_quiet(self, model_id: str, dedup_key: str, until: float) -> None:
        """A person resolved this: do not reopen it from data the resolution already judged."""
        await self.redis.hset(self.keys.quiet(model_id), dedup_key, until)
        await self.redis.expire(self.keys.quiet(model_id), 8 * 86_400)

    async def set_override(self, model_id: str, level: int | None) -> None:
        """Set (or, None, release) a manual escalation override."""
        async with self.redis.pipeline(transaction=False) as pipe:
            if level is None:
                pipe.hdel(self.keys.control(model_id), "override")
            else:
                pipe.hset(self.keys.control(model_id), "override", level)
            pipe.sadd(self.keys.controlled_models(), model_id)
            await pipe.execute()
