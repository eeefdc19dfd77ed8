"""Reads the windows the evaluator needs, for many models at once, in few round trips.

Short windows (≤ 1 h) are summed from minute buckets: the two newest minutes are read every tick,
the older minutes of each short window are summed once a minute (when the minute turns) and
cached. Long windows are summed from hour buckets: the current hour every tick, the closed hours
(up to 14 days back, for a 7-day window and the 7 days before it) from a cache that keeps only the
sums of the closed-hour ranges the rules read. When the hour turns the sums are shifted (two
buckets per range); they are re-read in full every `closed_refresh_s`, a few versions per tick.
Closed buckets still change (late labels, events more than a minute late), so the caches are
short-lived rather than permanent: such a change shows up within a refresh interval (longer when
there are many versions: the per-tick budget spreads their refreshes).

Users are not bucketed: "unserved users" counts people, and a person's requests span buckets. A
user is unserved in a window when they made a request in it and got no successful prediction in
it. Two sorted sets per version hold each user's newest request and newest success (event time);
with them, users(W) = ZCOUNT(seen, now - W, +inf) and unserved(W) = users(W) - ZCOUNT(served,
now - W, +inf), exact (no sketch) because every success is also a request, so served ⊆ seen.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import Redis

from monitor.aggregates.predictions import HOUR_S, MINUTE_S
from monitor.aggregates.window import WindowStats, sum_buckets
from monitor.store.keys import HOUR, MINUTE, Keys

MINUTES_KEPT = 60
REFERENCE_HOURS = range(24, 24 + 7 * 24)  # the 7 days before the current 24 h (hours back)
WEEK_S = 7 * 86_400
# Minutes read every tick; the older minutes of a short window are summed once per minute (when
# the minute turns, or every `closed_refresh_s`), so a tick reads 2 minute buckets, not 60.
FRESH_MINUTES = 2
# A pipeline this long is ~10 MB of replies; one pipeline for a cold read of 1,000 models would
# hold 600,000 commands and outlast the socket timeout.
MAX_PIPELINE_COMMANDS = 5_000
# Closed-hour buckets a tick re-reads to refresh sums that are due (about two versions' worth):
# the refresh of many versions is spread over ticks rather than stalling one.
MAX_REFRESH_COMMANDS = 700
YOUNG_S = 300.0  # for this long after a version is first read, its cached sums are re-read ...
YOUNG_REFRESH_S = 1.0  # ... this often (every tick at the default interval)


T = TypeVar("T")
Range = tuple[int, int]  # closed hours: (first hour back, how many)


def unserved(seen: int, served: int) -> tuple[int, int]:
    """(users, unserved users) of a window from the users seen in it and those served in it."""
    return seen, max(0, seen - served)  # served ⊆ seen; the clamp covers a trim between the reads


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


def minute_ranges(windows_s: Iterable[int]) -> frozenset[Range]:
    """The older minutes each short window (≤ 1 h) of a rule set sums beyond the FRESH_MINUTES
    read every tick, as (first minute back, how many)."""
    counts = {max(1, w // MINUTE_S) for w in windows_s if w <= MINUTES_KEPT * MINUTE_S}
    return frozenset((FRESH_MINUTES, n - FRESH_MINUTES) for n in counts if n > FRESH_MINUTES)


DEFAULT_WINDOWS_S = (300, 1800, 3600, 86_400, WEEK_S)
DEFAULT_RANGES = hour_ranges(DEFAULT_WINDOWS_S)


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
    # window_s -> (users with a request in the window, those of them with no successful one)
    users: dict[int, tuple[int, int]] = field(default_factory=dict)
    closed: dict[Range, Counter[str]] = field(default_factory=dict)
    # sums of the older minutes of short windows, beyond those in `minutes` (see `minute_ranges`)
    tails: dict[Range, Counter[str]] = field(default_factory=dict)
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
        if count not in self._minute_sums and count > len(self.minutes):
            older = (len(self.minutes), count - len(self.minutes))
            if older not in self.tails:
                raise KeyError(f"the {count} newest minutes were not read (see minute_ranges)")
            self._minute_sums[count] = _sum([*self.minutes, self.tails[older]])
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


# What the reader caches per (model, version), for minutes and for hours alike:
# (read in full at (monotonic), the minute or hour start they are aligned to, range sums).
_Sums = tuple[float, int, dict[Range, Counter[str]]]


def _update(
    cache: dict[tuple[str, str], _Sums],
    pair: tuple[str, str],
    start: int,
    backs: tuple[int, ...],
    read: Mapping[int, Counter[str]],
    every: tuple[int, ...],
    ranges: Iterable[Range],
    checked: float,
) -> None:
    """Record a pair's sums after reading the buckets `backs` (as `WindowReader._plan` chose):
    summed anew when that was `every` older bucket, shifted by one bucket when it was only the
    ranges' edges (the minute or hour turned), else kept as they are."""
    if backs == every:
        cache[pair] = (checked, start, range_sums([read[back] for back in range(1, every[-1] + 1)], ranges))
    elif backs:
        read_at, _, sums = cache[pair]
        cache[pair] = (read_at, start, _shift(sums, read))


def _chunks(steps: Sequence[T], cost: Callable[[T], int], limit: int) -> Iterator[list[T]]:
    """Consecutive runs of `steps` whose summed cost stays within `limit` (at least one step each)."""
    chunk: list[T] = []
    spent = 0
    for step in steps:
        if chunk and spent + cost(step) > limit:
            yield chunk
            chunk, spent = [], 0
        chunk.append(step)
        spent += cost(step)
    if chunk:
        yield chunk


def _shift(sums: Mapping[Range, Counter[str]], read: Mapping[int, Counter[str]]) -> dict[Range, Counter[str]]:
    """Range sums one bucket later: each (first, count) range gains the bucket now `first` back
    (it was just before the range) and loses the one now `first + count` back (its oldest)."""
    shifted: dict[Range, Counter[str]] = {}
    for (first, count), total in sums.items():
        moved = Counter(total)
        moved.update(read[first])
        moved.subtract(read[first + count])
        shifted[(first, count)] = +moved
    return shifted


def _sum(parts: Sequence[Counter[str]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part)
    return total


def range_sums(closed: Sequence[Counter[str]], ranges: Iterable[Range]) -> dict[Range, Counter[str]]:
    """Sums of (first bucket back, how many) ranges of buckets (closed[0] is 1 bucket back), from
    one running total: a range is the difference of the totals at its two ends, so overlapping
    ranges cost one pass."""
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
        windows_s: Iterable[int] = DEFAULT_WINDOWS_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.closed_refresh_s = closed_refresh_s
        self.user_windows_s = tuple(user_windows_s)
        self.windows_s: frozenset[int] = frozenset()
        self.ranges: frozenset[Range] = frozenset()
        self.minute_ranges: frozenset[Range] = frozenset()
        self.closed_hours = 0
        self.monotonic = clock
        # (model, version) -> (read at (monotonic), the hour or minute they are aligned to, range sums):
        # a few sums per version rather than two weeks of hour buckets and an hour of minutes.
        self._closed: dict[tuple[str, str], _Sums] = {}
        self._tails: dict[tuple[str, str], _Sums] = {}
        self._first_read: dict[tuple[str, str], float] = {}  # (model, version) -> first read (monotonic)
        self.require(windows_s)

    async def read(self, pairs: Sequence[tuple[str, str]], now: float) -> dict[tuple[str, str], VersionWindows]:
        """Windows of every (model, version) pair at event time `now`."""
        minute0 = int(now) - int(now) % MINUTE_S
        hour0 = int(now) - int(now) % HOUR_S
        checked = self.monotonic()
        for pair in pairs:
            self._first_read.setdefault(pair, checked)
        older_minutes = tuple(range(FRESH_MINUTES, MINUTES_KEPT))
        closed_hours = tuple(range(1, self.closed_hours + 1))
        minute_plan = self._plan(pairs, self._tails, minute0, MINUTE_S, older_minutes, self.minute_ranges, checked)
        hour_plan = self._plan(pairs, self._closed, hour0, HOUR_S, closed_hours, self.ranges, checked)
        plan = [(pair, minute_plan[pair], hour_plan[pair]) for pair in pairs]
        result: dict[tuple[str, str], VersionWindows] = {}
        for chunk in _chunks(plan, self._commands, MAX_PIPELINE_COMMANDS):
            replies = iter(await self._fetch(chunk, minute0, hour0, now))
            for pair, minute_backs, hour_backs in chunk:
                fresh = [sum_buckets([next(replies)]) for _ in range(FRESH_MINUTES)]
                minutes = {back: sum_buckets([next(replies)]) for back in minute_backs}
                current_hour = sum_buckets([next(replies)])
                users = {w: unserved(int(next(replies)), int(next(replies))) for w in self.user_windows_s}
                hours = {back: sum_buckets([next(replies)]) for back in hour_backs}
                minutes.update(enumerate(fresh))  # range sums count minutes back from the current one
                _update(self._tails, pair, minute0, minute_backs, minutes, older_minutes, self.minute_ranges, checked)
                _update(self._closed, pair, hour0, hour_backs, hours, closed_hours, self.ranges, checked)
                result[pair] = VersionWindows(
                    now, fresh, [current_hour], users, self._closed[pair][2], self._tails[pair][2]
                )
        return result

    def _plan(
        self,
        pairs: Sequence[tuple[str, str]],
        cache: Mapping[tuple[str, str], _Sums],
        start: int,
        step_s: int,
        every: tuple[int, ...],
        ranges: Iterable[Range],
        now: float,
    ) -> dict[tuple[str, str], tuple[int, ...]]:
        """Which older buckets (buckets back, counted from the current one) to read per pair.

        All of them (`every`) for a pair seen for the first time, after a gap, or whose sums are due
        for a refresh; those due share a budget per tick (the young and the oldest first), so
        refreshing a thousand versions is spread over many ticks instead of stalling one. When
        the minute or hour turns and a pair's sums are not due, they are shifted instead: each
        range gains the bucket that enters it and loses the one that leaves it.
        """
        edges = tuple(sorted({back for first, count in ranges for back in (first, first + count)}))
        plan: dict[tuple[str, str], tuple[int, ...]] = {}
        due: list[tuple[bool, float, tuple[str, str]]] = []
        for pair in pairs:
            cached = cache.get(pair)
            if cached is None or cached[1] not in (start, start - step_s):
                plan[pair] = every
                continue
            refresh_s = self._refresh_s(pair, now)
            if now - cached[0] >= refresh_s:
                due.append((refresh_s >= self.closed_refresh_s, cached[0], pair))
            plan[pair] = edges if cached[1] != start else ()
        budget = len(due) if self.closed_refresh_s <= 0 else max(1, MAX_REFRESH_COMMANDS // len(every))
        for _, _, pair in sorted(due)[:budget]:
            plan[pair] = every
        return plan

    def _commands(self, step: tuple[tuple[str, str], tuple[int, ...], tuple[int, ...]]) -> int:
        _, minute_backs, hour_backs = step
        return FRESH_MINUTES + len(minute_backs) + 1 + 2 * len(self.user_windows_s) + len(hour_backs)

    async def _fetch(
        self, chunk: list[tuple[tuple[str, str], tuple[int, ...], tuple[int, ...]]], minute0: int, hour0: int,
        now: float,
    ) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for (model_id, version), minute_backs, hour_backs in chunk:
                for back in (*range(FRESH_MINUTES), *minute_backs):
                    pipe.hgetall(self.keys.bucket(model_id, version, MINUTE, minute0 - back * MINUTE_S))
                pipe.hgetall(self.keys.bucket(model_id, version, HOUR, hour0))
                for window_s in self.user_windows_s:
                    since = now - window_s
                    pipe.zcount(self.keys.users_seen(model_id, version), since, "+inf")
                    pipe.zcount(self.keys.users_served(model_id, version), since, "+inf")
                for back in hour_backs:
                    pipe.hgetall(self.keys.bucket(model_id, version, HOUR, hour0 - back * HOUR_S))
            return list(await pipe.execute())

    def require_users(self, windows_s: Iterable[int]) -> None:
        """Also count users over these windows (a rule set's `unserved_users` windows)."""
        self.user_windows_s = tuple(sorted(set(self.user_windows_s) | set(windows_s)))

    def require(self, windows_s: Iterable[int]) -> None:
        """Also serve windows of these lengths (a rule set's): their closed-hour range sums and
        minute tails are kept from the next read on."""
        wanted = self.windows_s | frozenset(windows_s)
        if wanted != self.windows_s:
            self.windows_s = wanted
            self.ranges = hour_ranges(wanted)
            self.minute_ranges = minute_ranges(wanted)
            self.closed_hours = max(first + count - 1 for first, count in self.ranges)
            self._closed.clear()
            self._tails.clear()

    def _refresh_s(self, pair: tuple[str, str], now: float) -> float:
        # A version's history often arrives just after the reader first sees it (a backfill, a
        # first start, a canary's predecessor still being replayed): while it is young, its
        # cached sums are re-read every tick rather than every minute.
        young = now - self._first_read.get(pair, now) < YOUNG_S
        return min(self.closed_refresh_s, YOUNG_REFRESH_S) if young else self.closed_refresh_s

    def forget(self, keep: set[tuple[str, str]]) -> None:
        """Drop what is cached for pairs no longer evaluated."""
        for cache in (self._closed, self._tails, self._first_read):
            for pair in [p for p in cache if p not in keep]:
                del cache[pair]
