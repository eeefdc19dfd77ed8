"""Text from a Redis reply: without decode_responses (redis-py's default, which the monitor keeps),
hash fields and set members arrive as bytes.

Kept apart from `store/` so the pure core (`aggregates/`, which reads HGETALL replies it is
handed) can use it without importing the Redis side.
"""

from __future__ import annotations


def text(value: str | bytes) -> str:
    """The value as str (UTF-8 decoded when Redis handed back bytes)."""
    return value.decode() if isinstance(value, bytes) else value


__all__ = ["text"]
