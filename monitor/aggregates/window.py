"""Window statistics from bucket hashes: sum the counters, then derive rates and quantiles (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from monitor.aggregates import histogram
from monitor.aggregates.batch import (
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


@dataclass(frozen=True, slots=True)
class GroupStats:
    """Counts of one value of one group attribute."""

    count: int = 0
    decisions: int = 0
    favourable: int = 0
    errors: int = 0
    labelled: int = 0
    correct: int = 0
    actual_positive: int = 0
    false_negative: int = 0

    @property
    def accuracy(self) -> float | None:
        """Correct / labelled, None without labels."""
        return self.correct / self.labelled if self.labelled else None


@dataclass(frozen=True)
class WindowStats:
    """Everything a window of buckets says about a model (or one version of it)."""

    count: int = 0
    errors: int = 0
    decisions: int = 0
    favourable: int = 0
    labelled: int = 0
    correct: int = 0
    actual_positive: int = 0
    false_negative: int = 0
    latency: dict[int, int] = field(default_factory=dict)
    groups: dict[str, dict[str, GroupStats]] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_counters(cls, counters: Mapping[str, int]) -> WindowStats:
        """Parse summed bucket fields (see `monitor.aggregates.batch`) into statistics."""
        latency: dict[int, int] = {}
        flags: dict[str, int] = {}
        raw_groups: dict[tuple[str, str], dict[str, int]] = {}
        for name, value in counters.items():
            kind, _, rest = name.partition(SEP)
            if kind == "lat":
                latency[int(rest)] = value
            elif kind == "f":
                flags[unescape(rest)] = value
            elif kind == "g":
                attr, group_value, stat = rest.split(SEP)
                raw_groups.setdefault((unescape(attr), unescape(group_value)), {})[stat] = value
        groups: dict[str, dict[str, GroupStats]] = {}
        for (attr, group_value), stats in raw_groups.items():
            groups.setdefault(attr, {})[group_value] = GroupStats(
                count=stats.get(COUNT, 0),
                decisions=stats.get(DECISIONS, 0),
                favourable=stats.get(FAVOURABLE, 0),
                errors=stats.get(ERRORS, 0),
                labelled=stats.get(LABELLED, 0),
                correct=stats.get(CORRECT, 0),
                actual_positive=stats.get(ACTUAL_POSITIVE, 0),
                false_negative=stats.get(FALSE_NEGATIVE, 0),
            )
        return cls(
            count=counters.get(COUNT, 0),
            errors=counters.get(ERRORS, 0),
            decisions=counters.get(DECISIONS, 0),
            favourable=counters.get(FAVOURABLE, 0),
            labelled=counters.get(LABELLED, 0),
            correct=counters.get(CORRECT, 0),
            actual_positive=counters.get(ACTUAL_POSITIVE, 0),
            false_negative=counters.get(FALSE_NEGATIVE, 0),
            latency=latency,
            groups=groups,
            flags=flags,
        )

    @property
    def latency_count(self) -> int:
        """How many events carried a latency."""
        return sum(self.latency.values())

    @property
    def accuracy(self) -> float | None:
        """Correct / labelled predictions, None without labels."""
        return self.correct / self.labelled if self.labelled else None

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
