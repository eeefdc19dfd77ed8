"""Log-bucket histogram: bucket edges, the numpy path against the scalar one, merged percentiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.aggregates import histogram as h


@pytest.mark.parametrize(
    ("latency_ms", "index"),
    [
        (0.0, 0),
        (0.05, 0),
        (h.MIN_MS, 0),
        (h.MIN_MS * 1.0001, 1),
        (h.MIN_MS * h.GROWTH, 1),
        (h.MIN_MS * h.GROWTH * 1.0001, 2),
        (h.MIN_MS * 2, h.STEPS_PER_DOUBLING),
        (h.MIN_MS * 1024, 10 * h.STEPS_PER_DOUBLING),
        (1e9, h.BUCKETS - 1),
    ],
)
def test_bucket_edges(latency_ms: float, index: int) -> None:
    assert h.bucket_of(latency_ms) == index


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False))
def test_value_lies_inside_its_bucket(latency_ms: float) -> None:
    index = h.bucket_of(latency_ms)
    if 0 < index < h.BUCKETS - 1:
        assert h.upper_bound_ms(index - 1) < latency_ms * (1 + 1e-9)
        assert latency_ms <= h.upper_bound_ms(index) * (1 + 1e-9)


@given(st.lists(st.floats(min_value=0, max_value=1e7, allow_nan=False), min_size=1, max_size=200))
def test_numpy_path_matches_scalar_path(values: list[float]) -> None:
    vectorised = h.buckets_of(np.asarray(values, dtype=np.float64)).tolist()
    assert vectorised == [h.bucket_of(v) for v in values]


def test_quantile_of_merged_histograms_is_within_bucket_error() -> None:
    rng = np.random.default_rng(7)
    samples = rng.lognormal(mean=math.log(40), sigma=0.5, size=20_000)
    # three "workers" and two "minutes" each make their own histogram of a slice
    parts = np.array_split(samples, 6)
    histograms = []
    for part in parts:
        indices, counts = np.unique(h.buckets_of(part), return_counts=True)
        histograms.append(dict(zip(indices.tolist(), counts.tolist(), strict=True)))
    merged = h.merge(histograms)
    assert sum(merged.values()) == len(samples)
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(samples, q, method="inverted_cdf"))
        estimate = h.quantile_ms(merged, q)
        assert estimate is not None
        assert abs(estimate - exact) / exact < (h.GROWTH - 1) / 2 + 1e-9, q


def test_quantile_table() -> None:
    hist = {h.bucket_of(10.0): 90, h.bucket_of(1000.0): 10}
    assert h.quantile_ms(hist, 0.5) == pytest.approx(10.0, rel=0.05)
    assert h.quantile_ms(hist, 0.9) == pytest.approx(10.0, rel=0.05)
    assert h.quantile_ms(hist, 0.91) == pytest.approx(1000.0, rel=0.05)
    assert h.quantile_ms(hist, 1.0) == pytest.approx(1000.0, rel=0.05)
    assert h.quantile_ms({}, 0.5) is None
    with pytest.raises(ValueError):
        h.quantile_ms(hist, 0.0)
