"""The detector core against its theory: CUSUM false-alarm bound and delay by simulation, change
points, the cap, and confidence-sequence coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from monitor.detect.intervals import confidence_sequence, lower_bounds, upper_bounds
from monitor.detect.sequential import ODDS_RATIOS, Bank, alarm_threshold, alternatives


def _bank(rows: int, odds_ratios: tuple[float, ...] = ODDS_RATIOS) -> Bank:
    bank = Bank(odds_ratios=odds_ratios)
    bank.resize(np.full(rows, -1, dtype=np.int64), rows)
    return bank


def _run_lengths(
    p_true: float, p0: float, c: float, rows: int, horizon: int, batch: int | None, seed: int
) -> np.ndarray:
    """Ticks until each of `rows` independent detectors first alarms (horizon + 1 if never)."""
    rng = np.random.default_rng(seed)
    bank = _bank(rows)
    cap = np.full(rows, c)
    none = np.zeros(rows)
    first = np.full(rows, horizon + 1)
    boundary = np.full(rows, p0)
    for t in range(1, horizon + 1):
        n = rng.poisson(batch, rows).astype(float) if batch else np.ones(rows)
        k = rng.binomial(n.astype(np.int64), p_true).astype(float)
        bank.update(k, n, boundary, cap, since=float(t - 1))
        hit = bank.alarms(cap, none) & (first > horizon)
        first[hit] = t
        # A detector that alarmed is done (the question is when it first does).
        bank.reset(np.flatnonzero(hit))
    return first


def test_the_threshold_is_the_budget_split_over_ticks_detectors_and_alternatives() -> None:
    # 90 days of 1 s ticks, 1,000 detectors of 7 alternatives: log(2 · 7,776,000 · 1,000 · 7).
    c = alarm_threshold(90 * 86_400, 1.0, 1000, 7)
    assert c == pytest.approx(math.log(2 * 7_776_000 * 1000 * 7))
    assert alarm_threshold(3600, 1.0, 1, 1) == pytest.approx(math.log(7200))
    with pytest.raises(ValueError):
        alarm_threshold(0, 1.0, 1, 1)


@pytest.mark.parametrize("batch", [None, 30])
def test_false_alarms_at_the_boundary_stay_inside_the_budget(batch: int | None) -> None:
    # Budget B = 400 ticks for one detector: P(alarm within T ticks) ≤ T / 2B for every T.
    budget, rows, horizon = 400, 2000, 400
    c = alarm_threshold(budget, 1.0, 1, len(ODDS_RATIOS))
    first = _run_lengths(0.05, 0.05, c, rows, horizon, batch, seed=1)
    for t in (100, 200, 400):
        rate = float(np.mean(first <= t))
        # the bound, plus three binomial standard errors of the estimate
        assert rate <= t / (2 * budget) + 3 * math.sqrt(0.25 / rows), (t, rate)
    # The bound is far from tight: most detectors are still quiet after the whole budget.
    assert np.mean(first > horizon) > 0.5


def test_a_rate_inside_the_boundary_alarms_less_than_one_on_it() -> None:
    c = alarm_threshold(200, 1.0, 1, len(ODDS_RATIOS))
    on = _run_lengths(0.05, 0.05, c, 2000, 300, 30, seed=2)
    inside = _run_lengths(0.03, 0.05, c, 2000, 300, 30, seed=2)
    assert np.mean(inside <= 300) < np.mean(on <= 300)
    assert np.mean(inside <= 300) < 0.01


def test_delay_after_a_change_is_the_threshold_over_the_information_per_event() -> None:
    # One alternative at exactly the true rate: Lorden's delay is c / KL(p1 ‖ p0) events, plus an
    # overshoot of a few events.
    p0, p1 = 0.01, 0.05
    c = alarm_threshold(90 * 86_400, 1.0, 1000, 1)
    rng = np.random.default_rng(3)
    rows = 1000
    bank = _bank(rows, odds_ratios=((p1 / (1 - p1)) / (p0 / (1 - p0)),))
    cap, none, boundary = np.full(rows, c), np.zeros(rows), np.full(rows, p0)
    first = np.zeros(rows)
    for t in range(1, 5000):
        k = rng.binomial(1, p1, rows).astype(float)
        bank.update(k, np.ones(rows), boundary, cap, since=float(t - 1))
        hit = bank.alarms(cap, none) & (first == 0)
        first[hit] = t
        if (first > 0).all():
            break
    kl = p1 * math.log(p1 / p0) + (1 - p1) * math.log((1 - p1) / (1 - p0))
    assert (first > 0).all()
    assert 0.9 <= float(np.mean(first)) / (c / kl) <= 1.4


def test_the_change_point_is_where_the_rate_moved() -> None:
    rng = np.random.default_rng(4)
    rows, change = 300, 2000
    bank = _bank(rows)
    c = alarm_threshold(30 * 86_400, 1.0, 1, len(ODDS_RATIOS))
    cap, none, boundary = np.full(rows, c), np.zeros(rows), np.full(rows, 0.01)
    starts = np.full(rows, np.nan)
    for t in range(1, 6000):
        p = 0.004 if t <= change else 0.05
        k = rng.binomial(20, p, rows).astype(float)
        bank.update(k, np.full(rows, 20.0), boundary, cap, since=float(t - 1))
        hit = bank.alarms(cap, none) & np.isnan(starts)
        for d in np.flatnonzero(hit):
            starts[d] = bank.row(int(d), 0.01)[2]
        if not np.isnan(starts).any():
            break
    assert not np.isnan(starts).any()
    assert abs(float(np.median(starts)) - change) <= 5
    assert float(np.mean(np.abs(starts - change) <= 30)) >= 0.9


def test_the_cap_brings_a_detector_back_to_quiet_soon_after_a_long_change() -> None:
    bank = _bank(1)
    c = alarm_threshold(90 * 86_400, 1.0, 1000, len(ODDS_RATIOS))
    cap, boundary = np.array([c]), np.array([0.01])
    for t in range(7200):  # two hours of 100 requests a second at 5 % errors
        bank.update(np.array([5.0]), np.array([100.0]), boundary, cap, since=float(t))
    assert bank.stat.max() == pytest.approx(c)
    ticks = 0
    while not bank.quiet()[0]:  # back to 0.4 %
        bank.update(np.array([0.4]), np.array([100.0]), boundary, cap, since=float(ticks))
        ticks += 1
    # c / |drift| of the gentlest alternative (odds × 1.1: −0.00062 nats per event) is ~42,000
    # events; without the cap it would be 7,200 s × 100 × 0.017 nats / 0.00062 ≈ 20 million.
    assert ticks * 100 < 1.2 * c / 0.00062


def test_inside_follows_the_recent_rate_with_the_window_as_time_constant() -> None:
    bank = _bank(1)
    cap, boundary, decay = np.array([30.0]), np.array([0.01]), np.array([math.exp(-1 / 300)])
    for t in range(600):
        bank.update(np.array([5.0]), np.array([100.0]), boundary, cap, float(t), decay)
    assert not bank.inside(boundary)[0]
    ticks = 0
    while not bank.inside(boundary)[0]:
        bank.update(np.array([0.4]), np.array([100.0]), boundary, cap, float(ticks), decay)
        ticks += 1
    # (0.05 − 0.01) / (0.05 − 0.004) of the weight must age out: 300 s · ln(0.046 / 0.006) ≈ 611 s
    assert 550 <= ticks <= 650


def test_min_events_guard_and_nan_boundaries() -> None:
    bank = _bank(2)
    cap = np.array([5.0, 5.0])
    bank.update(np.array([10.0, 10.0]), np.array([10.0, 10.0]), np.array([0.01, np.nan]), cap, 0.0)
    assert bank.alarms(cap, np.array([0.0, 0.0])).tolist() == [True, False]
    assert bank.alarms(cap, np.array([200.0, 200.0])).tolist() == [False, False]
    assert bank.quiet().tolist() == [False, True]  # the NaN row learned nothing yet
    assert bank.waiting_total.tolist() == [0.0, 10.0]  # its events wait for its boundary
    bank.update(np.zeros(2), np.zeros(2), np.array([0.01, 0.01]), cap, 1.0)  # a boundary at last
    assert bank.total[1, 0] == 10.0 and bank.bad[1, 0] == 10.0 and bank.waiting_total[1] == 0.0
    assert bank.alarms(cap, np.array([0.0, 0.0])).tolist() == [True, True]


def test_resize_keeps_named_rows_and_state_round_trips() -> None:
    bank = _bank(3)
    cap = np.full(3, 50.0)
    bank.update(np.array([1.0, 2.0, 3.0]), np.array([10.0, 10.0, 10.0]), np.full(3, 0.01), cap, 7.0)
    saved = bank.rows_state(np.array([2], dtype=np.int64))
    bank.resize(np.array([2, -1, 0], dtype=np.int64), 3)
    assert bank.bad[:, 0].tolist() == [3.0, 0.0, 1.0]
    assert bank.recent_total.tolist() == [10.0, 0.0, 10.0]
    other = _bank(1)
    other.load_rows(np.array([0], dtype=np.int64), saved)
    assert other.bad[0, 0] == 3.0 and other.start[0, 0] == 7.0
    with pytest.raises(ValueError):
        other.load_rows(np.array([0], dtype=np.int64), saved[:, :3])


def test_alternatives_lie_above_the_boundary() -> None:
    p1 = alternatives(np.array([0.01, 0.5, 0.99]))
    assert (p1 > np.array([[0.01], [0.5], [0.99]])).all() and (p1 < 1).all()


def test_confidence_sequence_covers_the_rate_at_every_checkpoint_at_once() -> None:
    rng = np.random.default_rng(5)
    alpha, p, streams = 0.1, 0.3, 400
    checkpoints = np.unique(np.geomspace(10, 3000, 15).astype(int))
    draws = rng.binomial(1, p, (streams, int(checkpoints[-1]))).cumsum(axis=1)
    missed = 0
    for s in range(streams):
        for n in checkpoints:
            low, high = confidence_sequence(float(draws[s, n - 1]), float(n), alpha)
            if not low <= p <= high:
                missed += 1
                break
    assert missed / streams <= alpha


def test_confidence_sequence_is_wider_than_a_fixed_sample_interval() -> None:
    low, high = confidence_sequence(30, 1000, 0.05)
    exact = stats.binomtest(30, 1000).proportion_ci(confidence_level=0.95, method="exact")
    assert low < exact.low and high > exact.high
    assert low < 0.03 < high
    assert confidence_sequence(0, 100, 0.05)[0] == 0.0
    assert confidence_sequence(0, 0, 0.05) == (0.0, 1.0)


def test_one_sided_bounds_are_clopper_pearson() -> None:
    exact = stats.binomtest(40, 500).proportion_ci(confidence_level=0.98, method="exact")
    assert lower_bounds(np.array([40.0]), np.array([500.0]), 0.01)[0] == pytest.approx(exact.low)
    assert upper_bounds(np.array([40.0]), np.array([500.0]), 0.01)[0] == pytest.approx(exact.high)
    assert lower_bounds(np.array([0.0]), np.array([5.0]), 0.01)[0] == 0.0
    assert upper_bounds(np.array([5.0]), np.array([5.0]), 0.01)[0] == 1.0
    assert np.isnan(lower_bounds(np.array([0.0]), np.array([0.0]), 0.01)[0])
