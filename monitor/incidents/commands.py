"""People's commands (acknowledge, mitigate, resolve, escalate, release), queued for the evaluator.

The evaluator is the only writer of incidents and control state. The API does not change them
itself: it queues a command in the model's slot, and the next tick (≤ 1 s) applies it in order with
everything else, so a person's action and the monitor's own never overwrite each other.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

import msgspec
from redis.asyncio import Redis

from monitor.store.keys import Keys

Action = Literal["acknowledge", "mitigate", "resolve", "escalate", "release"]
RESULT_TTL_S = 3600


class Command(msgspec.Struct, kw_only=True):
    """One person's request."""

    id: str
    action: Action
    model_id: str
    who: str
    why: str
    at: float
    incident_id: str | None = None
    level: int | None = None


class CommandResult(msgspec.Struct, kw_only=True):
    """What became of a command."""

    id: str
    ok: bool
    error: str = ""
    applied_at: float = 0.0


def new_command(action: Action, model_id: str, who: str, why: str, **fields: object) -> Command:
    """A command with a fresh id, stamped now."""
    return Command(
        id=uuid.uuid4().hex[:12],
        action=action,
        model_id=model_id,
        who=who,
        why=why,
        at=time.time(),
        **fields,  # type: ignore[arg-type]  # fields: incident_id / level
    )


class CommandQueue:
    """The per-model command lists and their results."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def submit(self, command: Command) -> None:
        """Queue a command for the evaluator."""
        await self.redis.rpush(self.keys.commands(command.model_id), msgspec.json.encode(command))

    async def take(self, model_ids: list[str]) -> dict[str, list[Command]]:
        """Remove and return every queued command, per model, in arrival order."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for model_id in model_ids:
                pipe.lrange(self.keys.commands(model_id), 0, -1)
                pipe.delete(self.keys.commands(model_id))
            replies = await pipe.execute()
        decoder = msgspec.json.Decoder(Command)
        return {
            model_id: [decoder.decode(raw) for raw in replies[2 * i]] for i, model_id in enumerate(model_ids)
        }

    async def record(self, result: CommandResult) -> None:
        """Keep a command's outcome for an hour (the API and CLI wait for it)."""
        await self.redis.set(
            self.keys.command_result(result.id), msgspec.json.encode(result), ex=RESULT_TTL_S
        )

    async def result(self, command_id: str) -> CommandResult | None:
        """A command's outcome, None while it is queued."""
        raw = await self.redis.get(self.keys.command_result(command_id))
        return None if raw is None else msgspec.json.decode(raw, type=CommandResult)
