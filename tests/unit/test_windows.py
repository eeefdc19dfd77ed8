"""Window sums: minute prefixes and closed-hour range sums equal the plain sums they replace."""

from __future__ import annotations

from collections import Counter

import pytest

from monitor.aggregates.window import (
    DEFAULT_RANGES,
    FRESH_MINUTES,
    VersionWindows,
    hour_ranges,
    minute_ranges,
    range_sums,
)

HOURS = [Counter({"n": i, "err": i % 3, f"g|sex|{'FM'[i % 2]}|n": i}) for i in range(1, 337)]
MINUTES = [Counter({"n": 100 + i, "lat|3": i % 4}) for i in range(60)]


def plain(parts: list[Counter[str]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part)
    return +total


@pytest.mark.parametrize("first,count", sorted(DEFAULT_RANGES | {(1, 1), (5, 10), (335, 1)}))
def test_range_sum_equals_the_plain_sum(first: int, count: int) -> None:
    sums = range_sums(HOURS, DEFAULT_RANGES | {(1, 1), (5, 10), (335, 1)})
    assert sums[(first, count)] == plain(HOURS[first - 1 : first - 1 + count])


def test_rule_windows_name_their_ranges() -> None:
    assert hour_ranges([300]) == {(24, 168), (168, 1)}
    assert hour_ranges([86_400]) == {(24, 168), (1, 23), (168, 24)}


@pytest.mark.parametrize(
    "window_s,shift_s",
    [(300, 0), (1800, 0), (3600, 0), (60, 0), (86_400, 0), (604_800, 0), (604_800, 604_800), (3600, 604_800)],
)
def test_windows_from_range_sums_equal_windows_from_every_hour(window_s: int, shift_s: int) -> None:
    every_hour = VersionWindows(0.0, MINUTES, [Counter({"n": 7}), *HOURS])
    from_sums = VersionWindows(
        0.0, MINUTES, [Counter({"n": 7})], closed=range_sums(HOURS, hour_ranges([window_s]))
    )
    assert +from_sums.counters(window_s, shift_s=shift_s) == +every_hour.counters(window_s, shift_s=shift_s)
    assert from_sums.reference_counters() == plain(HOURS[23:191])


def test_a_range_nobody_asked_for_is_an_error() -> None:
    windows = VersionWindows(0.0, MINUTES, [Counter()], closed=range_sums(HOURS, {(1, 23)}))
    with pytest.raises(KeyError, match="were not read"):
        windows.counters(2 * 86_400)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 30, 60])
def test_windows_from_minute_tails_equal_windows_from_every_minute(count: int) -> None:
    every_minute = VersionWindows(0.0, MINUTES, [Counter()])
    from_tails = VersionWindows(
        0.0,
        MINUTES[:FRESH_MINUTES],
        [Counter()],
        tails=range_sums(MINUTES[1:], minute_ranges([60 * count, 300])),
    )
    assert +from_tails.counters(60 * count) == +every_minute.counters(60 * count)


def test_a_minute_window_nobody_asked_for_is_an_error() -> None:
    windows = VersionWindows(
        0.0, MINUTES[:FRESH_MINUTES], [Counter()], tails=range_sums(MINUTES[1:], minute_ranges([300]))
    )
    with pytest.raises(KeyError, match="newest minutes were not read"):
        windows.counters(600)
