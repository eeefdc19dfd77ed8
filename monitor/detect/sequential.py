"""Sequential change detectors for rates: banks of Bernoulli CUSUMs, as numpy arrays (pure).

Every rate rule asks one question of a stream of events: has the rate of "bad" events (errors,
flags, wrong predictions, unfavourable decisions) moved past a boundary p0? A detector answers it
with Page's CUSUM on the Bernoulli likelihood ratio of p1 against p0, for a grid of K alternatives
p1 > p0 (the size of a real change is not known in advance). Each evaluator tick feeds every
detector the counts (k bad of n) that arrived since the previous tick:

    S ← min(cap, max(0, S + k·log(p1/p0) + (n − k)·log((1 − p1)/(1 − p0))))

A detector alarms when any of its K statistics reaches c. Guarantee (Lorden 1971; in the
e-detector form of Shin, Ramdas & Rinaldo): S_t ≥ c means that for some start j the likelihood
ratio of the events since j is ≥ e^c. Under a rate ≤ p0 each such ratio is a non-negative
martingale (a supermartingale below p0) with mean 1, so by Ville's inequality it ever reaches e^c
with probability ≤ e^-c. A union bound over the starts (one per tick) and the K alternatives gives
P(a false alarm within T ticks) ≤ T·K·e^-c, whatever the batch sizes and however the rate wanders
inside the boundary. `alarm_threshold` turns a budget (a mean time to false alarm) into c.

The statistic is capped at c: after an alarm the evidence of a past change does not pile up, so
the detector returns to zero within about c / |drift| events once the rate is back inside, instead
of hours after a long incident. Whether the rate *is* back inside (what recovery counts) is judged
on an exponentially weighted recent rate kept beside the statistics, with the rule's window as its
time constant: the same question a window's point estimate answers, from the same increments.

Each component also remembers where its current run began (the last tick it stood at zero): the
CUSUM's estimate of the change point, and the counts since then, from which the incident reports
the rate since the change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

# Alternatives, as odds ratios against the boundary: a rate 10 % above it in odds (a disparate
# impact of 0.75 against a boundary of 0.8 is about 1.13) up to ten times it (an outage). A finer
# grid costs log K in the threshold; seven points lose at most ~15 % of the delay of the best one.
ODDS_RATIOS: tuple[float, ...] = (1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
# Boundaries are kept inside (0, 1): a rate threshold of 0 or 1 has no likelihood ratio.
_EDGE = 1e-9


def alarm_threshold(budget_s: float, tick_s: float, detectors: int, alternatives: int) -> float:
    """The c at which each CUSUM alarms so that `detectors` detectors of K `alternatives` each,
    stepped every `tick_s` seconds, raise a false alarm within any period T with probability at most
    T / (2·budget_s) when every rate sits on its boundary; the mean time to the first of them is
    then at least `budget_s` (P(τ ≤ t) ≤ t/2B integrates to E[τ] ≥ B)."""
    if budget_s <= 0 or tick_s <= 0:
        raise ValueError("a budget and a tick must be positive")
    steps = max(budget_s / tick_s, 1.0)
    return math.log(2.0 * steps * max(detectors, 1) * max(alternatives, 1))


def alternatives(p0: Array, odds_ratios: tuple[float, ...] = ODDS_RATIOS) -> Array:
    """The alternative rates p1 (D × K) for boundaries p0 (D): the boundary's odds times each ratio."""
    p = np.clip(p0, _EDGE, 1.0 - _EDGE)
    odds = (p / (1.0 - p))[:, None] * np.asarray(odds_ratios)[None, :]
    result: Array = odds / (1.0 + odds)
    return result


@dataclass
class Bank:
    """The state of D detectors with K alternatives each; row d is one (version, group, step) rule
    question, whose meaning the caller keeps. Everything is an array, updated in place."""

    odds_ratios: tuple[float, ...] = ODDS_RATIOS
    stat: Array = field(default_factory=lambda: np.zeros((0, len(ODDS_RATIOS))))  # S, D × K
    start: Array = field(default_factory=lambda: np.zeros((0, len(ODDS_RATIOS))))  # run start (time)
    bad: Array = field(default_factory=lambda: np.zeros((0, len(ODDS_RATIOS))))  # k since the start
    total: Array = field(default_factory=lambda: np.zeros((0, len(ODDS_RATIOS))))  # n since the start
    recent_bad: Array = field(default_factory=lambda: np.zeros(0))  # exponentially weighted k, D
    recent_total: Array = field(default_factory=lambda: np.zeros(0))  # exponentially weighted n, D
    # Events that came while the row had no boundary (its baseline not in yet), aged like the
    # recent rate: fed to the row once it has one, so they are not lost to it.
    waiting_bad: Array = field(default_factory=lambda: np.zeros(0))
    waiting_total: Array = field(default_factory=lambda: np.zeros(0))

    @property
    def size(self) -> int:
        """How many detectors (rows) the bank holds."""
        return int(self.stat.shape[0])

    @property
    def width(self) -> int:
        """How many alternatives (columns) each detector has."""
        return len(self.odds_ratios)

    def resize(self, keep: npt.NDArray[np.int64], size: int) -> None:
        """Rebuild the bank with `size` rows: row i takes old row keep[i] (−1: a new, empty detector).
        Rows the caller no longer names are dropped."""
        old = self._arrays()
        fresh = [np.zeros((size, *a.shape[1:])) for a in old]
        taken = keep[:size] >= 0
        for new, previous in zip(fresh, old, strict=True):
            if taken.any():
                new[np.flatnonzero(taken)] = previous[keep[:size][taken]]
        (
            self.stat,
            self.start,
            self.bad,
            self.total,
            self.recent_bad,
            self.recent_total,
            self.waiting_bad,
            self.waiting_total,
        ) = fresh

    def _arrays(self) -> tuple[Array, ...]:
        return (
            self.stat,
            self.start,
            self.bad,
            self.total,
            self.recent_bad,
            self.recent_total,
            self.waiting_bad,
            self.waiting_total,
        )

    def update(
        self, bad: Array, total: Array, p0: Array, cap: Array, since: float, decay: Array | None = None
    ) -> None:
        """Add one tick's counts: `bad` of `total` events per detector, against boundaries `p0`,
        statistics capped at `cap` (each row's alarm threshold). A row whose boundary is NaN (no
        baseline yet) or has no events learns nothing and keeps its state. `since` is when the
        tick's events began (the previous tick), recorded as the start of any run beginning now.
        `decay` (per row, e^(−tick/window)) ages the recent rate first (1: no ageing). A row with
        no boundary keeps its events waiting (aged the same way) and is fed them once it has one."""
        if decay is not None:
            for a in (self.recent_bad, self.recent_total, self.waiting_bad, self.waiting_total):
                a *= decay
        self.recent_bad += bad
        self.recent_total += total
        stated = np.isfinite(p0)
        self.waiting_bad += np.where(stated, 0.0, bad)
        self.waiting_total += np.where(stated, 0.0, total)
        ready = stated & (self.waiting_total > 0)
        if ready.any():  # a boundary at last: the events that waited for it count now
            bad = bad + np.where(ready, self.waiting_bad, 0.0)
            total = total + np.where(ready, self.waiting_total, 0.0)
            self.waiting_bad[ready] = 0.0
            self.waiting_total[ready] = 0.0
        live = (total > 0) & stated
        if not live.any():
            return
        rows = np.flatnonzero(live)
        k, n = bad[rows], total[rows]
        p = np.clip(p0[rows], _EDGE, 1.0 - _EDGE)
        p1 = alternatives(p, self.odds_ratios)
        llr = k[:, None] * np.log(p1 / p[:, None]) + (n - k)[:, None] * np.log(
            (1.0 - p1) / (1.0 - p[:, None])
        )
        stat = self.stat[rows]
        restart = stat <= 0.0  # a run begins with this tick's events
        self.start[rows] = np.where(restart, since, self.start[rows])
        self.bad[rows] = np.where(restart, 0.0, self.bad[rows]) + k[:, None]
        self.total[rows] = np.where(restart, 0.0, self.total[rows]) + n[:, None]
        self.stat[rows] = np.minimum(np.maximum(stat + llr, 0.0), cap[rows][:, None])

    def reset(self, rows: npt.NDArray[np.int64]) -> None:
        """Forget the evidence of `rows` (their boundary moved: the old evidence was about another
        question)."""
        for a in (self.stat, self.start, self.bad, self.total):
            a[rows] = 0.0

    def inside(self, p0: Array) -> npt.NDArray[np.bool_]:
        """Rows whose recent rate is at or below the boundary (or that saw nothing recently)."""
        result: npt.NDArray[np.bool_] = ~(self.recent_bad > p0 * self.recent_total)
        return result

    def strongest(self) -> npt.NDArray[np.int64]:
        """Per row, the alternative with the largest statistic (the first of equals)."""
        result: npt.NDArray[np.int64] = np.argmax(self.stat, axis=1) if self.size else np.zeros(0, np.int64)
        return result

    def alarms(self, cap: Array, min_events: Array) -> npt.NDArray[np.bool_]:
        """Rows in alarm: a statistic at its threshold, over at least `min_events` events since its
        run began (a few unlucky events never page anyone)."""
        at = self.stat >= cap[:, None] * (1.0 - 1e-12)
        enough = self.total >= min_events[:, None]
        return np.asarray((at & enough).any(axis=1), dtype=bool)

    def quiet(self) -> npt.NDArray[np.bool_]:
        """Rows whose every statistic is back at zero: the events since the last run look healthy."""
        return np.asarray((self.stat <= 0.0).all(axis=1), dtype=bool)

    def row(self, d: int, p0: float) -> tuple[float, float, float, float, float]:
        """Row d's strongest component against boundary p0: (statistic, its alternative's odds
        ratio, run start, bad, total)."""
        stat = self.stat[d]
        # Several components may stand at the cap: report the one whose alternative is nearest to
        # the rate seen since its run began (its change point then fits that rate best).
        top = np.flatnonzero(stat >= stat.max() * (1.0 - 1e-12))
        j = int(top[0])
        if len(top) > 1 and self.total[d, top[0]] > 0:
            seen = np.clip(self.bad[d, top] / np.maximum(self.total[d, top], 1.0), _EDGE, 1.0 - _EDGE)
            ratios = np.asarray(self.odds_ratios)[top]
            boundary = min(max(p0, _EDGE), 1.0 - _EDGE)
            seen_ratio = (seen / (1.0 - seen)) / (boundary / (1.0 - boundary))
            j = int(top[np.argmin(np.abs(np.log(seen_ratio) - np.log(ratios)))])
        return (
            float(self.stat[d, j]),
            self.odds_ratios[j],
            float(self.start[d, j]),
            float(self.bad[d, j]),
            float(self.total[d, j]),
        )

    @property
    def state_width(self) -> int:
        """Numbers per row in `rows_state`: 4 per alternative and 4 more."""
        return 4 * self.width + 4

    def rows_state(self, rows: npt.NDArray[np.int64]) -> Array:
        """The state of `rows` as one array (rows × state_width), for persistence."""
        parts = [a[rows] for a in (self.stat, self.start, self.bad, self.total)]
        parts += [a[rows][:, None] for a in self._arrays()[4:]]
        return np.concatenate(parts, axis=1)

    def load_rows(self, rows: npt.NDArray[np.int64], state: Array) -> None:
        """Restore `rows` from `rows_state` output (a width that does not match is refused)."""
        k = self.width
        if state.shape != (len(rows), self.state_width):
            raise ValueError(
                f"detector state of shape {state.shape}, expected ({len(rows)}, {self.state_width})"
            )
        for i, a in enumerate((self.stat, self.start, self.bad, self.total)):
            a[rows] = state[:, i * k : (i + 1) * k]
        for i, a in enumerate(self._arrays()[4:]):
            a[rows] = state[:, 4 * k + i]
