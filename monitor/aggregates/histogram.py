"""Fixed log-bucket latency histogram: bucket counts from any worker and any minute simply add up.

Bucket 0 holds everything at or below `MIN_MS`; bucket i ≥ 1 holds (MIN_MS·G^(i-1), MIN_MS·G^i] with
G = 2^(1/8), so a bucket is about 9 % wide and a percentile read from its geometric middle is within
about 4.5 % of the true value. The last bucket also takes everything above the range.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

MIN_MS = 0.1
STEPS_PER_DOUBLING = 8
GROWTH = 2.0 ** (1.0 / STEPS_PER_DOUBLING)
# 0.1 ms · 2^20 ≈ 105 s: anything slower is "timed out" for our purposes and shares the top bucket.
BUCKETS = 20 * STEPS_PER_DOUBLING + 1


def bucket_of(latency_ms: float) -> int:
    """The bucket index of one latency in milliseconds."""
    if latency_ms <= MIN_MS:
        return 0
    index = math.ceil(math.log2(latency_ms / MIN_MS) * STEPS_PER_DOUBLING - 1e-9)
    return min(index, BUCKETS - 1)


def buckets_of(latencies_ms: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Bucket indices of many latencies at once (the batch path); same result as `bucket_of`."""
    scaled = np.log2(np.maximum(latencies_ms, MIN_MS) / MIN_MS) * STEPS_PER_DOUBLING - 1e-9
    return np.clip(np.ceil(scaled), 0, BUCKETS - 1).astype(np.int64)


def upper_bound_ms(index: int) -> float:
    """The upper edge of a bucket in milliseconds."""
    return float(MIN_MS * GROWTH**index)


def representative_ms(index: int) -> float:
    """The value a bucket stands for: its geometric middle (bucket 0: MIN_MS)."""
    if index == 0:
        return MIN_MS
    return float(MIN_MS * GROWTH ** (index - 0.5))


def merge(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """Sum bucket counts of many histograms (minutes, versions, workers)."""
    total: dict[int, int] = {}
    for histogram in histograms:
        for index, count in histogram.items():
            total[index] = total.get(index, 0) + count
    return total


def quantile_ms(histogram: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0 < q ≤ 1) in milliseconds, or None for an empty histogram.

    Uses the nearest-rank definition: the smallest bucket whose cumulative count reaches q·n.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {q}")
    n = sum(histogram.values())
    if n == 0:
        return None
    rank = math.ceil(q * n)
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return representative_ms(index)
    raise AssertionError("cumulative count never reached the rank")  # pragma: no cover
