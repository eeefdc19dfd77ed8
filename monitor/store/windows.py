"""Reads the windows the evaluator needs, for many models at once, in few round trips.

Short windows (≤ 1 h) are summed from minute buckets, read fresh every tick. Long windows are
summed from hour buckets: the current hour fresh every tick, the closed hours (up to 14 days back,
for a 7-day window and the 7 days before it) from a cache refreshed every `closed_refresh_s`.
Closed hours still change when late labels arrive, so the cache is short-lived rather than
permanent; a late label shows up in long windows within that refresh interval.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from monitor.aggregates.batch import HOUR_S, MINUTE_S
from monitor.aggregates.window import WindowStats, sum_buckets
from monitor.store.keys import HOUR, MINUTE, Keys

MINUTES_KEPT = 60
CLOSED_HOURS = 14 * 24
REFERENCE_HOURS = range(24, 24 + 7 * 24)  # the 7 days before the current 24 h (hours back)
WEEK_S = 7 * 86_400


@dataclass
class VersionWindows:
    """The buckets of one model version around `now`, and the windows built from them."""

    now: float
    minutes: list[Counter[str]]  # [0] is the current minute, [i] i minutes back
    hours: list[Counter[str]]  # [0] is the current hour, [i] i hours back
    users: dict[int, tuple[int, int]] = field(default_factory=dict)  # window_s -> (users, failed)
    _cache: dict[tuple[str, int, int], WindowStats] = field(default_factory=dict)

    def window(self, window_s: int, *, shift_s: int = 0) -> WindowStats:
        """The last `window_s` seconds (shifted `shift_s` into the past), at bucket resolution."""
        key = ("w", window_s, shift_s)
        if key not in self._cache:
            if window_s <= MINUTES_KEPT * MINUTE_S and shift_s == 0:
                parts = self.minutes[: max(1, window_s // MINUTE_S)]
            else:
                first = shift_s // HOUR_S
                parts = self.hours[first : first + max(1, window_s // HOUR_S)]
            self._cache[key] = WindowStats.from_counters(_sum(parts))
        return self._cache[key]

    def start_of(self, window_s: int) -> float:
        """Where `window(window_s)` begins (its first bucket's start)."""
        if window_s <= MINUTES_KEPT * MINUTE_S:
            minute0 = int(self.now) - int(self.now) % MINUTE_S
            return float(minute0 - (max(1, window_s // MINUTE_S) - 1) * MINUTE_S)
        hour0 = int(self.now) - int(self.now) % HOUR_S
        return float(hour0 - (max(1, window_s // HOUR_S) - 1) * HOUR_S)

    def reference_counters(self) -> Counter[str]:
        """Summed counters of the trailing 7 days before the current 24 h."""
        return _sum(self.hours[REFERENCE_HOURS.start : REFERENCE_HOURS.stop])

    def reference(self) -> WindowStats:
        """The trailing 7 days before the current 24 h."""
        key = ("ref", 0, 0)
        if key not in self._cache:
            self._cache[key] = WindowStats.from_counters(self.reference_counters())
        return self._cache[key]

    def week_ago(self, window_s: int) -> WindowStats:
        """The same window one week earlier."""
        return self.window(max(window_s, HOUR_S), shift_s=WEEK_S)


def _sum(parts: Sequence[Counter[str]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part)
    return total


class WindowReader:
    """Reads `VersionWindows` for many (model, version) pairs per tick."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        closed_refresh_s: float = 60.0,
        user_windows_s: Sequence[int] = (300, 3600),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.closed_refresh_s = closed_refresh_s
        self.user_windows_s = tuple(user_windows_s)
        self.monotonic = clock
        # (model, version) -> (read at (monotonic), hour the list starts at, closed hours 1..N back)
        self._closed: dict[tuple[str, str], tuple[float, int, list[Counter[str]]]] = {}

    async def read(self, pairs: Sequence[tuple[str, str]], now: float) -> dict[tuple[str, str], VersionWindows]:
        """Windows of every (model, version) pair at event time `now`."""
        minute0 = int(now) - int(now) % MINUTE_S
        hour0 = int(now) - int(now) % HOUR_S
        stale = [pair for pair in pairs if self._needs_refresh(pair, hour0)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for model_id, version in pairs:
                for i in range(MINUTES_KEPT):
                    pipe.hgetall(self.keys.bucket(model_id, version, MINUTE, minute0 - i * MINUTE_S))
                pipe.hgetall(self.keys.bucket(model_id, version, HOUR, hour0))
                for window_s in self.user_windows_s:
                    starts = [minute0 - i * MINUTE_S for i in range(max(1, window_s // MINUTE_S))]
                    pipe.pfcount(*(self.keys.users(model_id, version, m) for m in starts))
                    pipe.pfcount(*(self.keys.users(model_id, version, m, failed=True) for m in starts))
            for model_id, version in stale:
                for i in range(1, CLOSED_HOURS + 1):
                    pipe.hgetall(self.keys.bucket(model_id, version, HOUR, hour0 - i * HOUR_S))
            replies = iter(await pipe.execute())
        result: dict[tuple[str, str], VersionWindows] = {}
        fresh: dict[tuple[str, str], list[Counter[str]]] = {}
        per_pair: list[tuple[tuple[str, str], list[Counter[str]], Counter[str], dict[int, tuple[int, int]]]] = []
        for pair in pairs:
            minutes = [sum_buckets([next(replies)]) for _ in range(MINUTES_KEPT)]
            current_hour = sum_buckets([next(replies)])
            users = {w: (int(next(replies)), int(next(replies))) for w in self.user_windows_s}
            per_pair.append((pair, minutes, current_hour, users))
        for pair in stale:
            fresh[pair] = [sum_buckets([next(replies)]) for _ in range(CLOSED_HOURS)]
        checked = self.monotonic()
        for pair, closed in fresh.items():
            self._closed[pair] = (checked, hour0, closed)
        for pair, minutes, current_hour, users in per_pair:
            _, _, closed = self._closed[pair]
            result[pair] = VersionWindows(now, minutes, [current_hour, *closed], users)
        return result

    def _needs_refresh(self, pair: tuple[str, str], hour0: int) -> bool:
        cached = self._closed.get(pair)
        if cached is None:
            return True
        read_at, hour_at_read, _ = cached
        return hour_at_read != hour0 or self.monotonic() - read_at >= self.closed_refresh_s

    def forget(self, keep: set[tuple[str, str]]) -> None:
        """Drop cached hours of pairs no longer evaluated."""
        for pair in list(self._closed):
            if pair not in keep:
                del self._closed[pair]
