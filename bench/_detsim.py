"""Simulated prediction traffic for the detector benchmarks: per-model totals, windows, incidents.

Shared by bench/false_alarms.py and bench/detection_delay.py. Everything is numpy arrays over M
models (each a replication or a member of a simulated fleet) and F totals fields, named as ingest
names them (monitor.aggregates.predictions): plain stats, flags, latency buckets, and the same eight
stats per group value ("g|<attr>|<value>|<stat>"; an event increments the plain field and one
field of each of its attributes' values, as GroupShape.of does). Labels are joined in the tick of
their prediction (no label lag).

Events of a tick come from per-model, per-cell parameters (a cell is one combination of group
values): requests ~ Poisson, errors, labels, actual positives, false negatives / positives and
the unlabelled favourable decisions ~ binomial, flags ~ binomial, latency buckets ~ multinomial
of a log-normal. `History` keeps the cumulative totals at every minute and hour boundary, so any
window the evaluator reads (at bucket resolution, as monitor.aggregates.window.VersionWindows
builds it) is a difference of two snapshots.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

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
    escape,
    flag_field,
    group_field,
    latency_field,
)
from monitor.aggregates.window import WindowStats
from monitor.rules.detectors import DetectorSet
from monitor.rules.schema import Rule

Array = npt.NDArray[np.float64]
STATS = (COUNT, ERRORS, DECISIONS, FAVOURABLE, LABELLED, CORRECT, ACTUAL_POSITIVE, FALSE_NEGATIVE)
FLAGS = ("toxic", "gibberish", "contradiction", "known_false")
ATTRS: dict[str, tuple[str, ...]] = {
    "sex": ("F", "M"),
    "age_band": ("18-29", "30-44", "45-64", "65+"),
    "zip3": ("100", "112", "606", "941"),
}
MARGINALS: dict[str, tuple[float, ...]] = {
    "sex": (0.5, 0.5),
    "age_band": (0.3, 0.3, 0.25, 0.15),
    "zip3": (0.25, 0.25, 0.25, 0.25),
}
# Latency buckets kept: ~5 ms to ~30 s (faster or slower ones are folded into the edge buckets).
LAT_LO, LAT_HI = histogram.bucket_of(5.0), histogram.bucket_of(30_000.0)
LAT_BUCKETS = np.arange(LAT_LO, LAT_HI + 1)
VERSION = "1"
T0 = 1_700_002_800.0  # an hour boundary (UTC), the start of every simulated clock
HOUR = 3600
MINUTE = 60
KEEP_HOURS = 24 * 15  # the reference and week-ago baselines reach 335 hours back


def latency_probabilities(median_ms: Array, sigma: float = 0.3) -> Array:
    """Bucket probabilities (M × kept buckets) of log-normal latencies with these medians."""
    upper = np.array([histogram.upper_bound_ms(int(i)) for i in LAT_BUCKETS])
    cdf = stats.lognorm.cdf(upper[None, :], sigma, scale=np.asarray(median_ms)[:, None])
    cdf[:, -1] = 1.0
    return np.diff(np.concatenate([np.zeros((cdf.shape[0], 1)), cdf], axis=1), axis=1)


def lognormal_quantile_ms(median_ms: float, q: float, sigma: float = 0.3) -> float:
    """The q-quantile of the log-normal latency of `latency_probabilities`."""
    return float(stats.lognorm.ppf(q, sigma, scale=median_ms))


class Layout:
    """Totals field names and their columns, for a set of group attributes."""

    def __init__(self, attrs: Mapping[str, Sequence[str]]) -> None:
        self.attrs = {a: tuple(v) for a, v in attrs.items()}
        self.groups = [(a, v) for a, values in self.attrs.items() for v in values]
        names = list(STATS) + [flag_field(f) for f in FLAGS] + [latency_field(int(i)) for i in LAT_BUCKETS]
        names += [group_field(a, v, s) for a, v in self.groups for s in STATS]
        self.fields = names
        self.col = {n: i for i, n in enumerate(names)}
        head = escape(VERSION) + "|"
        self.keys = [head + n for n in names]
        self.cells = list(itertools.product(*[range(len(v)) for v in self.attrs.values()]))
        # cells × group values: which group values each cell belongs to
        self.member = np.zeros((len(self.cells), len(self.groups)))
        offsets = np.cumsum([0] + [len(v) for v in self.attrs.values()])[:-1]
        for c, cell in enumerate(self.cells):
            for a, index in enumerate(cell):
                self.member[c, offsets[a] + index] = 1.0
        self.stat_cols = np.array([self.col[s] for s in STATS])
        self.group_cols = np.array(
            [[self.col[group_field(a, v, s)] for s in STATS] for a, v in self.groups], dtype=np.int64
        ).reshape(len(self.groups), len(STATS))
        self.flag_cols = np.array([self.col[flag_field(f)] for f in FLAGS])
        self.lat_cols = np.array([self.col[latency_field(int(i))] for i in LAT_BUCKETS])

    def cell_shares(self) -> Array:
        """Each cell's share of the traffic (attributes independent, MARGINALS or uniform)."""
        shares = np.ones(len(self.cells))
        for c, cell in enumerate(self.cells):
            for (attr, values), index in zip(self.attrs.items(), cell, strict=True):
                marg = MARGINALS.get(attr, ())
                shares[c] *= marg[index] if len(marg) == len(values) else 1.0 / len(values)
        return shares / shares.sum()

    def cells_with(self, attr: str, value: str) -> npt.NDArray[np.bool_]:
        """Cells whose `attr` is `value`."""
        a = list(self.attrs).index(attr)
        v = self.attrs[attr].index(value)
        return np.array([cell[a] == v for cell in self.cells])

    def group_index(self, attr: str, value: str) -> int:
        """The column of group value (attr, value) among `groups`."""
        return self.groups.index((attr, value))

    def totals(self, cum: Array, subset: npt.NDArray[np.int64] | None = None) -> list[dict[str, int]]:
        """Each model's totals hash (only the `subset` columns when given)."""
        cols = np.arange(len(self.fields)) if subset is None else subset
        keys = [self.keys[i] for i in cols]
        return [dict(zip(keys, row, strict=True)) for row in cum[:, cols].astype(np.int64).tolist()]

    def window_stats(self, sums: Array, subset: npt.NDArray[np.int64] | None = None) -> list[WindowStats]:
        """One WindowStats per model from window sums (M × F)."""
        cols = np.arange(len(self.fields)) if subset is None else subset
        names = [self.fields[i] for i in cols]
        return [
            WindowStats.from_counters(dict(zip(names, row, strict=True)))
            for row in sums[:, cols].astype(np.int64).tolist()
        ]


@dataclass
class Traffic:
    """Per-model (M) and per-cell (M × C) parameters of the simulated events."""

    layout: Layout
    rate: Array  # requests per second, M
    p_err: Array  # M
    label: Array  # share of answered requests labelled, M
    pi: Array  # share of actual positives, M × C
    fnr: Array  # M × C
    fpr: Array  # M × C
    flags: Array  # M × len(FLAGS)
    latency: Array  # bucket probabilities, M × kept buckets

    @classmethod
    def healthy(cls, layout: Layout, models: int, rate: float) -> Traffic:
        """Every model at the same healthy point: errors 0.4 %, accuracy 0.9, parity, p95 ~82 ms."""
        c = len(layout.cells)
        return cls(
            layout,
            np.full(models, float(rate)),
            np.full(models, 0.004),
            np.full(models, 0.6),
            np.full((models, c), 0.5),
            np.full((models, c), 0.1),
            np.full((models, c), 0.1),
            np.tile(np.array([0.0002, 0.002, 0.004, 0.002]), (models, 1)),
            latency_probabilities(np.full(models, 50.0)),
        )

    def set_favourable(
        self, rows: npt.NDArray[np.bool_] | slice, cells: npt.NDArray[np.bool_], q: Array
    ) -> None:
        """Make the favourable-decision rate of `cells` equal `q` (per model or scalar) through the
        share of actual positives: q = π(1 − fnr) + (1 − π)·fpr (accuracy stays 1 − fnr at fnr = fpr)."""
        fnr, fpr = self.fnr[rows][:, cells], self.fpr[rows][:, cells]
        q = np.asarray(q, dtype=float)
        q = q[:, None] if q.ndim == 1 else q
        pi = self.pi[rows]
        pi[:, cells] = np.clip((q - fpr) / (1.0 - fnr - fpr), 0.0, 1.0)
        self.pi[rows] = pi

    def favourable(self) -> Array:
        """The favourable-decision rate of each cell (M × C)."""
        result: Array = self.pi * (1.0 - self.fnr) + (1.0 - self.pi) * self.fpr
        return result

    def draw(self, rng: np.random.Generator, seconds: float) -> Array:
        """The totals increments (M × F) of `seconds` of traffic."""
        lay = self.layout
        m = len(self.rate)
        n = rng.poisson(self.rate[:, None] * seconds * lay.cell_shares()[None, :])
        err = rng.binomial(n, self.p_err[:, None])
        dec = n - err
        lab = rng.binomial(dec, self.label[:, None])
        apos = rng.binomial(lab, self.pi)
        fn = rng.binomial(apos, self.fnr)
        fp = rng.binomial(lab - apos, self.fpr)
        cor = (apos - fn) + (lab - apos - fp)
        unl = rng.binomial(dec - lab, np.clip(self.favourable(), 0.0, 1.0))
        pos = (apos - fn) + fp + unl
        cells = np.stack([n, err, dec, pos, lab, cor, apos, fn], axis=2).astype(float)  # M × C × 8
        out = np.zeros((m, len(lay.fields)))
        out[:, lay.stat_cols] = cells.sum(axis=1)
        grouped = np.einsum("mcs,cg->mgs", cells, lay.member)
        out[:, lay.group_cols.reshape(-1)] = grouped.reshape(m, -1)
        total = n.sum(axis=1)
        out[:, lay.flag_cols] = rng.binomial(total[:, None], self.flags)
        out[:, lay.lat_cols] = rng.multinomial(total, self.latency)
        return out


class History:
    """Cumulative totals (M × F) now and at every minute and hour boundary; windows by difference."""

    def __init__(self, models: int, fields: int, start: float = T0) -> None:
        self.cum = np.zeros((models, fields))
        self.minutes: dict[int, Array] = {}
        self.hours: dict[int, Array] = {}
        self.now = start
        self.first = int(start)
        self._zero = np.zeros((models, fields))

    def advance(self, increments: Array, seconds: float) -> None:
        """Add `seconds` of events (a tick, a minute or an hour; never across a bucket edge)."""
        start = int(self.now)
        if start % MINUTE == 0:
            self.minutes[start] = self.cum.copy()
            self.minutes.pop(start - 62 * MINUTE, None)
        if start % HOUR == 0:
            self.hours[start] = self.cum.copy()
            self.hours.pop(start - KEEP_HOURS * HOUR, None)
        self.cum += increments
        self.now += seconds

    def _at(self, book: Mapping[int, Array], t: int) -> Array:
        if t <= self.first:
            return self._zero
        return book[t]

    def window(self, window_s: int) -> Array:
        """Sums of the rule window ending now, at bucket resolution (the current minute or hour
        and the closed ones before it, as VersionWindows.window)."""
        last = int(self.now) - 1  # the newest event's second
        if window_s <= HOUR:
            minute0 = last - last % MINUTE
            return self.cum - self._at(self.minutes, minute0 - (max(1, window_s // MINUTE) - 1) * MINUTE)
        hour0 = last - last % HOUR
        return self.cum - self._at(self.hours, hour0 - (max(1, window_s // HOUR) - 1) * HOUR)

    def closed(self, first: int, count: int) -> Array:
        """Closed hours `first`..`first + count − 1` back (VersionWindows._closed_hours)."""
        last = int(self.now) - 1
        hour0 = last - last % HOUR
        return self._at(self.hours, hour0 - (first - 1) * HOUR) - self._at(
            self.hours, hour0 - (first + count - 1) * HOUR
        )

    def reference(self) -> Array:
        """The 7 days before the current 24 h (VersionWindows.reference)."""
        return self.closed(24, 168)

    def week_ago(self, window_s: int) -> Array:
        """The same window one week earlier (VersionWindows.week_ago)."""
        return self.closed(168, max(1, max(window_s, HOUR) // HOUR))

    def baseline(self, rule: Rule) -> Array | None:
        """The rule's baseline sums, as the evaluator picks them (no frozen predecessor here)."""
        if rule.baseline == "reference":
            return self.reference()
        if rule.baseline == "week_ago":
            return self.week_ago(rule.window_s)
        return None


def restate_all(
    detectors: DetectorSet,
    layout: Layout,
    history: History,
    rules: Sequence[Rule],
    model_ids: Sequence[str],
    subset: npt.NDArray[np.int64] | None = None,
) -> None:
    """Re-state every model's boundaries from its windows now (what Detection.refresh does)."""
    current: dict[int, list[WindowStats]] = {}
    base: dict[str, list[WindowStats] | None] = {}
    for rule in rules:
        if rule.window_s not in current:
            current[rule.window_s] = layout.window_stats(history.window(rule.window_s), subset)
        sums = history.baseline(rule)
        base[rule.id] = None if sums is None else layout.window_stats(sums, subset)
    for m, model_id in enumerate(model_ids):

        def current_for(rule: Rule, m: int = m) -> WindowStats:
            return current[rule.window_s][m]

        def baseline_for(rule: Rule, m: int = m) -> WindowStats | None:
            found = base.get(rule.id)
            return None if found is None else found[m]

        detectors.restate(model_id, VERSION, current_for, baseline_for)


def prefill(history: History, traffic: Traffic, rng: np.random.Generator, hours: int) -> None:
    """`hours` of history before the run: hour draws, then the last hour minute by minute (so
    the minute windows exist); starts on an hour boundary."""
    for _ in range(max(hours - 1, 0)):
        history.advance(traffic.draw(rng, HOUR), HOUR)
    for _ in range(60 if hours else 0):
        history.advance(traffic.draw(rng, MINUTE), MINUTE)


class Episodes:
    """Alarm episodes per key: an episode opens on an alarm with none open and closes once the key
    has not alarmed for `hold_s` (a stand-in for an incident's open → recovered lifecycle)."""

    def __init__(self, keys: int, hold_s: Array) -> None:
        self.open = np.zeros(keys, dtype=bool)
        self.last = np.full(keys, -math.inf)
        self.count = np.zeros(keys, dtype=np.int64)
        self.first = np.full(keys, math.nan)
        self.hold_s = hold_s

    def step(self, alarm: npt.NDArray[np.bool_], now: float) -> None:
        """One evaluation: `alarm` per key."""
        self.open &= now - self.last < self.hold_s
        opening = alarm & ~self.open
        self.count += opening
        self.first = np.where(np.isnan(self.first) & alarm, now, self.first)
        self.open |= alarm
        self.last = np.where(alarm, now, self.last)


def base_alarm_keys(
    detectors: DetectorSet, key_of: Callable[[str, str, str | None], int], keys: int
) -> npt.NDArray[np.bool_]:
    """Per key, whether any base-step row of that (model, rule, group) is in alarm now."""
    out = np.zeros(keys, dtype=bool)
    for row in np.flatnonzero(detectors.alarm):
        q = detectors.rows[row]
        if q.step == 0:
            out[key_of(detectors.row_model[row], q.rule.id, q.group)] = True
    return out
