"""Window statistics from bucket hashes: sum the counters, then derive rates and quantiles (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
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
    LABELLED,
    LATENCY_COUNT,
    SEP,
    unescape,
)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def sum_buckets(buckets: Iterable[Mapping[str | bytes, str | bytes]]) -> Counter[str]:
    """Add bucket hashes (as HGETALL returns them) field by field."""
    total: Counter[str] = Counter()
    for bucket in buckets:
        for name, value in bucket.items():
            total[_text(name)] += int(value)
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
