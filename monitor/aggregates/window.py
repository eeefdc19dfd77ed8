"""Window statistics from bucket hashes: sum the counters, then derive rates and quantiles (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from monitor.aggregates import histogram
from monitor.aggregates.predictions import (
    ACTUAL_POSITIVE,
    CORRECT,
    COUNT,
    DECISIONS,
    ERRORS,
    FALSE_NEGATIVE,
    FAVOURABLE,
    HOUR_S,
    LABELLED,
    LATENCY_COUNT,
    MINUTE_S,
    SEP,
    unescape,
)
from monitor.text import text


def sum_buckets(buckets: Iterable[Mapping[str | bytes, str | bytes]]) -> Counter[str]:
    """Add bucket hashes (as HGETALL returns them) field by field."""
    total: Counter[str] = Counter()
    for bucket in buckets:
        for name, value in bucket.items():
            total[text(name)] += int(value)
    return total


@lru_cache(maxsize=262_144)
def _parse_field(name: str) -> tuple[str, int, tuple[str, str], str]:
    """A bucket field as (kind, latency bucket, (attribute, group value), rest), parsed once per
    distinct name: the evaluator meets the same few hundred names in every window of every tick."""
    kind, _, rest = name.partition(SEP)
    if kind == "lat":
        return kind, int(rest), NO_GROUP, ""
    if kind == "f":
        return kind, 0, NO_GROUP, unescape(rest)
    if kind == "g":
        attr, group_value, stat = rest.split(SEP)
        return kind, 0, (unescape(attr), unescape(group_value)), stat
    return kind, 0, NO_GROUP, rest


NO_GROUP = ("", "")


# Counter fields shared by a whole window and by each group value: attribute name -> bucket field.
_COUNTS = {
    "count": COUNT,
    "errors": ERRORS,
    "decisions": DECISIONS,
    "favourable": FAVOURABLE,
    "labelled": LABELLED,
    "correct": CORRECT,
    "actual_positive": ACTUAL_POSITIVE,
    "false_negative": FALSE_NEGATIVE,
}


def _counts(fields: Mapping[str, int]) -> dict[str, int]:
    return {name: fields.get(field_name, 0) for name, field_name in _COUNTS.items()}


@dataclass(frozen=True)
class Counts:
    """Decisions, outcomes and labels of a population (a whole window, or one group value)."""

    count: int = 0
    errors: int = 0
    decisions: int = 0  # decisions that say whether the outcome was favourable
    favourable: int = 0
    labelled: int = 0
    correct: int = 0
    actual_positive: int = 0  # labelled favourable
    false_negative: int = 0  # labelled favourable, decided unfavourable

    @property
    def accuracy(self) -> float | None:
        """Correct / labelled predictions, None without labels."""
        return self.correct / self.labelled if self.labelled else None


@dataclass(frozen=True)
class GroupStats(Counts):
    """Counts of one value of one group attribute."""


@dataclass(frozen=True)
class WindowStats(Counts):
    """Everything a window of buckets says about a model (or one version of it)."""

    latency: dict[int, int] = field(default_factory=dict)
    groups: dict[str, dict[str, GroupStats]] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)
    # Security counters by kind (see monitor.aggregates.access): kind -> escaped key -> count
    security: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def from_counters(cls, counters: Mapping[str, int]) -> WindowStats:
        """Parse summed bucket fields (see `monitor.aggregates.predictions`) into statistics."""
        latency: dict[int, int] = {}
        flags: dict[str, int] = {}
        raw_groups: dict[tuple[str, str], dict[str, int]] = {}
        security: dict[str, dict[str, int]] = {}
        for name, value in counters.items():
            kind, index, group, rest = _parse_field(name)
            if kind == "lat":
                latency[index] = value
            elif kind == "f":
                flags[rest] = value
            elif kind == "g":
                raw_groups.setdefault(group, {})[rest] = value
            elif kind.startswith("s"):
                security.setdefault(kind, {})[rest] = value
        groups: dict[str, dict[str, GroupStats]] = {}
        for (attr, group_value), stats in raw_groups.items():
            groups.setdefault(attr, {})[group_value] = GroupStats(**_counts(stats))
        return cls(**_counts(counters), latency=latency, groups=groups, flags=flags, security=security)

    @property
    def latency_count(self) -> int:
        """How many events carried a latency."""
        return sum(self.latency.values())

    @property
    def label_coverage(self) -> float | None:
        """Labelled / answered (non-errored) predictions, None without predictions."""
        answered = self.count - self.errors
        return min(1.0, self.labelled / answered) if answered > 0 else None

    def latency_above(self, seconds: float) -> int:
        """How many latencies certainly exceed `seconds` (whole buckets above it; conservative)."""
        limit_ms = seconds * 1000.0
        return sum(
            count
            for index, count in self.latency.items()
            if index > 0 and histogram.upper_bound_ms(index - 1) >= limit_ms
        )

    @property
    def error_rate(self) -> float | None:
        """Errored requests / requests, None without requests."""
        return self.errors / self.count if self.count else None

    def latency_quantile_s(self, q: float) -> float | None:
        """The q-quantile of latency in seconds, None without latencies."""
        ms = histogram.quantile_ms(self.latency, q)
        return None if ms is None else ms / 1000.0


__all__ = ["LATENCY_COUNT", "GroupStats", "WindowStats", "sum_buckets"]


MINUTES_KEPT = 60
REFERENCE_HOURS = range(24, 24 + 7 * 24)  # the 7 days before the current 24 h (hours back)
WEEK_S = 7 * 86_400
# Minutes read every tick; the older minutes of a short window are summed once per minute (when
# the minute turns, or every `closed_refresh_s`), so a tick reads 2 minute buckets, not 60.
FRESH_MINUTES = 2

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


def shift_sums(
    sums: Mapping[Range, Counter[str]], read: Mapping[int, Counter[str]]
) -> dict[Range, Counter[str]]:
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
