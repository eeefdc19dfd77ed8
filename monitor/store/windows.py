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
from typing import Any, TypeVar

from redis.asyncio import Redis

from monitor.aggregates.predictions import HOUR_S, MINUTE_S
from monitor.aggregates.window import (
    DEFAULT_WINDOWS_S,
    FRESH_MINUTES,
    MINUTES_KEPT,
    Range,
    VersionWindows,
    hour_ranges,
    minute_ranges,
    range_sums,
    shift_sums,
    sum_buckets,
    unserved,
)
from monitor.store.keys import HOUR, MINUTE, Keys

# A pipeline this long is ~10 MB of replies; one pipeline for a cold read of 1,000 models would
# hold 600,000 commands and outlast the socket timeout.
MAX_PIPELINE_COMMANDS = 5_000
# Closed-hour buckets a tick re-reads to refresh sums that are due (about two versions' worth):
# the refresh of many versions is spread over ticks rather than stalling one.
MAX_REFRESH_COMMANDS = 700
YOUNG_S = 300.0  # for this long after a version is first read, its cached sums are re-read ...
YOUNG_REFRESH_S = 1.0  # ... this often (every tick at the default interval)


T = TypeVar("T")
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
        cache[pair] = (read_at, start, shift_sums(sums, read))


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


class WindowReader:
    """Reads `VersionWindows` for many (model, version) pairs per tick."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        closed_refresh_s: float = 60.0,
        user_windows_s: Sequence[int] = (),  # the rules add theirs (require_users)
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

    async def read(
        self, pairs: Sequence[tuple[str, str]], now: float
    ) -> dict[tuple[str, str], VersionWindows]:
        """Windows of every (model, version) pair at event time `now`."""
        minute0 = int(now) - int(now) % MINUTE_S
        hour0 = int(now) - int(now) % HOUR_S
        checked = self.monotonic()
        for pair in pairs:
            self._first_read.setdefault(pair, checked)
        older_minutes = tuple(range(FRESH_MINUTES, MINUTES_KEPT))
        closed_hours = tuple(range(1, self.closed_hours + 1))
        minute_plan = self._plan(
            pairs, self._tails, minute0, MINUTE_S, older_minutes, self.minute_ranges, checked
        )
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
                _update(
                    self._tails,
                    pair,
                    minute0,
                    minute_backs,
                    minutes,
                    older_minutes,
                    self.minute_ranges,
                    checked,
                )
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
        self,
        chunk: list[tuple[tuple[str, str], tuple[int, ...], tuple[int, ...]]],
        minute0: int,
        hour0: int,
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
