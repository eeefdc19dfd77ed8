"""The catch-up hold's pure parts: a partition's progress, and whether silence rules hold."""

from __future__ import annotations

import pytest

from monitor.agents.ingest import RawMessage
from monitor.agents.lag import AppliedTracker
from monitor.aggregates.lag import PartitionProgress, progress
from monitor.rules.catchup import judge

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("applied", "ts", "committed", "highwater", "behind", "lag_s"),
    [
        (99, NOW - 1200, None, 100, False, 0.0),  # the newest record applied: caught up
        (49, NOW - 1200, None, 100, True, 1200.0),  # 50 records to go; the evidence is 20 min old
        (None, None, 100, 100, False, 0.0),  # nothing new since the worker got the partition
        (None, None, 40, 100, True, None),  # behind, but how old its input is nobody knows yet
        (None, None, None, 100, None, None),  # nothing applied, nothing committed: cannot tell
        (None, None, None, 0, False, 0.0),  # an empty partition
        (10, NOW - 5, None, None, None, None),  # no high-water mark fetched yet
        (10, NOW - 900, 100, 100, False, 0.0),  # another worker applied the rest before a rebalance
    ],
)
def test_progress(
    applied: int | None,
    ts: float | None,
    committed: int | None,
    highwater: int | None,
    behind: bool | None,
    lag_s: float | None,
) -> None:
    got = progress(
        0, applied_offset=applied, applied_ts=ts, committed=committed, highwater=highwater, now=NOW
    )
    assert (got.behind, got.lag_s) == (behind, lag_s)
    assert PartitionProgress.decode(0, got.encode()) == got


def report(
    partition: int, lag_s: float | None, *, behind: bool | None = True, age_s: float = 0.5
) -> PartitionProgress:
    return PartitionProgress(partition, 1, None, 2, behind if lag_s != 0 else False, lag_s, NOW - age_s)


@pytest.mark.parametrize(
    ("reports", "held", "delay_s", "behind"),
    [
        ([report(0, 0), report(1, 0), report(2, 0)], False, 0.0, {}),
        ([report(0, 0), report(1, 59.0), report(2, 0)], False, 59.0, {}),  # inside the tolerance
        ([report(0, 0), report(1, 60.0), report(2, 0)], True, 60.0, {1: 60.0}),
        ([report(0, 0), report(1, 2400.0), report(2, 30.0)], True, 2400.0, {1: 2400.0}),
        ([report(0, 0), report(1, 0)], True, 100.0, {2: None}),  # partition 2: nobody reports it
        ([report(0, 0), report(1, 0), report(2, 0, age_s=30)], True, 30.0, {2: None}),  # stale report
        ([report(0, 0), report(1, None), report(2, 0)], True, 0.0, {1: None}),  # lag unknown
        ([report(0, 0), report(1, 0), report(2, None, behind=None)], True, 0.0, {2: None}),
        ([], True, 100.0, {0: None, 1: None, 2: None}),  # a worker's start: no report yet
    ],
)
def test_hold(
    reports: list[PartitionProgress], held: bool, delay_s: float, behind: dict[int, float | None]
) -> None:
    got = judge({r.partition: r for r in reports}, range(3), NOW, watching_since=NOW - 100)
    assert (got.held, got.delay_s, got.behind) == (held, pytest.approx(delay_s, abs=0.6), behind)


def test_a_partition_reported_beyond_the_known_count_still_counts() -> None:
    got = judge({0: report(0, 0), 5: report(5, 600.0)}, range(1), NOW, watching_since=NOW)
    assert got.held and got.behind == {5: 600.0}


def test_no_partition_at_all_holds() -> None:
    assert judge({}, range(0), NOW, watching_since=NOW).held


def test_tracker_keeps_the_newest_applied_record_per_owned_partition() -> None:
    tracker = AppliedTracker("p")
    tracker.applied(
        [
            RawMessage("p", 0, 7, None, None, NOW - 70),
            RawMessage("p", 0, 5, None, None, NOW - 90),
            RawMessage("p", 1, 3, None, None, NOW - 10),
            RawMessage("other", 2, 99, None, None, NOW),
        ]
    )
    reports = tracker.reports([0, 1, 2], highwater={0: 8, 1: 10, 2: 0}.get, committed=lambda p: None, now=NOW)
    assert [(r.partition, r.offset, r.behind, r.lag_s) for r in reports] == [
        (0, 7, False, 0.0),
        (1, 3, True, 10.0),
        (2, None, False, 0.0),
    ]
    tracker.reports([1], highwater=lambda p: 10, committed=lambda p: None, now=NOW)  # 0 was revoked
    again = tracker.reports([0], highwater=lambda p: 8, committed=lambda p: None, now=NOW)
    assert [(r.offset, r.behind) for r in again] == [(None, None)]  # forgotten: cannot tell until it applies
