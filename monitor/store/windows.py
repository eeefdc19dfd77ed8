"""Reads the windows the evaluator needs, for many models at once, in few round trips.

Short windows (≤ 1 h) are summed from minute buckets, read fresh every tick. Long windows are
summed from hour buckets: the current hour fresh every tick, the closed hours (up to 14 days back,
for a 7-day window and the 7 days before it) from a cache refreshed every `closed_refresh_s`.
The cache keeps only the sums of the closed-hour ranges the rules read, not the hours.
Closed hours still change when late labels arrive, so the cache is short-lived rather than
permanent; a late label shows up in long windows within that refresh interval.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from monitor.aggregates.batch import HOUR_S, MINUTE_S
from monitor.aggregates.window import WindowStats, sum_buckets
from monitor.store.keys import HOUR, MINUTE, Keys

MINUTES_KEPT = 60
REFERENCE_HOURS = range(24, 24 + 7 * 24)  # the 7 days before the current 24 h (hours back)
WEEK_S = 7 * 86_400
YOUNG_S = 300.0  # for this long after a version is first read, its closed hours are re-read ...
YOUNG_REFRESH_S = 5.0  # ... this often


Range = tuple[int, int]  # closed hours: (first hour back, how many)


def hour_ranges(windows_s: Iterable[int]) -> frozenset[Range]:
    """The closed-hour ranges the windows of a rule set read: each long window's closed part, each
    window one week earlier, and the reference (the 7 days before the current 24 h)."""
    ranges = {(REFERENCE_HOURS.start, len(REFERENCE_HOURS))}
    for window_s in windows_s:
        hours = max(1, window_s // HOUR_S)
        if window_s > MINUTES_KEPT * MINUTE_S and hours > 1:
            ranges.add((1, hours - 1))
        ranges.add((WEEK_S // HOUR_S, hours))
    return frozenset(ranges)


DEFAULT_RANGES = hour_ranges((300, 1800, 3600, 86_400, WEEK_S))


@dataclass
class VersionWindows:
    """The buckets of one model version around `now`, and the windows built from them.

    `hours` holds the current hour first and then as many closed hours as were read; `closed`
    holds sums of closed-hour ranges (see `hour_ranges`), which the reader keeps instead of
    every closed hour. A window is summed once per tick and cached.
    """

    now: float
    minutes: list[Counter[str]]  # [0] is the current minute, [i] i minutes back
    hours: list[Counter[str]]  # [0] is the current hour, [i] i hours back
    users: dict[int, tuple[int, int]] = field(default_factory=dict)  # window_s -> (users, failed)
    closed: dict[Range, Counter[str]] = field(default_factory=dict)
    _cache: dict[tuple[str, int, int], WindowStats] = field(default_factory=dict)
    _minute_sums: dict[int, Counter[str]] = field(default_factory=dict)

    def window(self, window_s: int, *, shift_s: int = 0) -> WindowStats:
        """The last `window_s` seconds (shifted `shift_s` into the past), at bucket resolution."""
        key = ("w", window_s, shift_s)
        if key not in self._cache:
            self._cache[key] = WindowStats.from_counters(self.counters(window_s, shift_s=shift_s))
        return self._cache[key]

    def counters(self, window_s: int, *, shift_s: int = 0) -> Counter[str]:
        """The summed bucket fields of `window(window_s, shift_s=shift_s)`."""
        if window_s <= MINUTES_KEPT * MINUTE_S and shift_s == 0:
            return self._first_minutes(max(1, window_s // MINUTE_S))
        first, count = shift_s // HOUR_S, max(1, window_s // HOUR_S)
        if first > 0:
            return self._closed_hours(first, count)
        return _sum([self.hours[0], self._closed_hours(1, count - 1)] if count > 1 else self.hours[:1])

    def _first_minutes(self, count: int) -> Counter[str]:
        # Windows of 5, 30 and 60 minutes share their newest minutes: each sum starts from the
        # longest shorter one already summed.
        if count not in self._minute_sums:
            done = max((n for n in self._minute_sums if n < count), default=0)
            total = Counter(self._minute_sums[done]) if done else Counter()
            for part in self.minutes[done:count]:
                total.update(part)
            self._minute_sums[count] = total
        return self._minute_sums[count]

    def _closed_hours(self, first: int, count: int) -> Counter[str]:
        if (first, count) in self.closed:
            return self.closed[(first, count)]
        if len(self.hours) < first + count:
            raise KeyError(f"closed hours {first}..{first + count - 1} were not read (see hour_ranges)")
        return _sum(self.hours[first : first + count])

    def start_of(self, window_s: int) -> float:
        """Where `window(window_s)` begins (its first bucket's start)."""
        if window_s <= MINUTES_KEPT * MINUTE_S:
            minute0 = int(self.now) - int(self.now) % MINUTE_S
            return float(minute0 - (max(1, window_s // MINUTE_S) - 1) * MINUTE_S)
        hour0 = int(self.now) - int(self.now) % HOUR_S
        return float(hour0 - (max(1, window_s // HOUR_S) - 1) * HOUR_S)

    def reference_counters(self) -> Counter[str]:
        """Summed counters of the trailing 7 days before the current 24 h."""
        return self._closed_hours(REFERENCE_HOURS.start, len(REFERENCE_HOURS))

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


def range_sums(closed: Sequence[Counter[str]], ranges: Iterable[Range]) -> dict[Range, Counter[str]]:
    """Sums of closed-hour ranges (closed[0] is 1 hour back), from one running total: a range is
    the difference of the totals at its two ends, so overlapping ranges cost one pass."""
    ranges = sorted(set(ranges))
    ends = sorted({end for first, count in ranges for end in (first - 1, first + count - 1)})
    running: Counter[str] = Counter()
    at: dict[int, Counter[str]] = {0: Counter()}
    done = 0
    for end in ends:
        for part in closed[done:end]:
            running.update(part)
        done = max(done, end)
        at[end] = Counter(running)
    sums = {}
    for first, count in ranges:
        total = Counter(at[first + count - 1])
        total.subtract(at[first - 1])
        sums[(first, count)] = +total  # counters only grow, so this drops nothing but zeros
    return sums


class WindowReader:
    """Reads `VersionWindows` for many (model, version) pairs per tick."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        closed_refresh_s: float = 60.0,
        user_windows_s: Sequence[int] = (300, 3600),
        ranges: Iterable[Range] = DEFAULT_RANGES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.closed_refresh_s = closed_refresh_s
        self.user_windows_s = tuple(user_windows_s)
        self.ranges = frozenset(ranges)
        self.closed_hours = max(first + count - 1 for first, count in self.ranges)
        self.monotonic = clock
        # (model, version) -> (read at (monotonic), hour they end before, closed-hour range sums):
        # a few sums per version rather than two weeks of hour buckets.
        self._closed: dict[tuple[str, str], tuple[float, int, dict[Range, Counter[str]]]] = {}
        self._first_read: dict[tuple[str, str], float] = {}  # (model, version) -> first read (monotonic)

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
                for i in range(1, self.closed_hours + 1):
                    pipe.hgetall(self.keys.bucket(model_id, version, HOUR, hour0 - i * HOUR_S))
            replies = iter(await pipe.execute())
        result: dict[tuple[str, str], VersionWindows] = {}
        fresh: dict[tuple[str, str], dict[Range, Counter[str]]] = {}
        per_pair: list[tuple[tuple[str, str], list[Counter[str]], Counter[str], dict[int, tuple[int, int]]]] = []
        for pair in pairs:
            minutes = [sum_buckets([next(replies)]) for _ in range(MINUTES_KEPT)]
            current_hour = sum_buckets([next(replies)])
            users = {w: (int(next(replies)), int(next(replies))) for w in self.user_windows_s}
            per_pair.append((pair, minutes, current_hour, users))
        for pair in stale:
            hours = [sum_buckets([next(replies)]) for _ in range(self.closed_hours)]
            fresh[pair] = range_sums(hours, self.ranges)
        checked = self.monotonic()
        for pair, sums in fresh.items():
            self._closed[pair] = (checked, hour0, sums)
        for pair, minutes, current_hour, users in per_pair:
            result[pair] = VersionWindows(now, minutes, [current_hour], users, self._closed[pair][2])
        return result

    def require(self, ranges: Iterable[Range]) -> None:
        """Also keep the sums of these closed-hour ranges (a rule set's, see `hour_ranges`)."""
        wanted = self.ranges | frozenset(ranges)
        if wanted != self.ranges:
            self.ranges = wanted
            self.closed_hours = max(first + count - 1 for first, count in wanted)
            self._closed.clear()

    def _needs_refresh(self, pair: tuple[str, str], hour0: int) -> bool:
        now = self.monotonic()
        first = self._first_read.setdefault(pair, now)
        cached = self._closed.get(pair)
        if cached is None:
            return True
        read_at, hour_at_read, _ = cached
        # A version's history often arrives just after the reader first sees it (a backfill, a
        # first start, a canary's predecessor still being replayed): while it is young, its closed
        # hours are re-read every few seconds rather than every minute.
        young = now - first < YOUNG_S
        interval = min(self.closed_refresh_s, YOUNG_REFRESH_S) if young else self.closed_refresh_s
        return hour_at_read != hour0 or now - read_at >= interval

    def forget(self, keep: set[tuple[str, str]]) -> None:
        """Drop cached hours of pairs no longer evaluated."""
        for pair in list(self._closed):
            if pair not in keep:
                del self._closed[pair]
                self._first_read.pop(pair, None)
