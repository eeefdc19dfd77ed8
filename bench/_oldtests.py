"""Today's fixed-window tests, vectorised over models and groups, for the benchmarks' side by side.

The same decisions as monitor.rules.evaluate.evaluate / monitor.rules.bias.evaluate_bias (the
exact binomial test per ladder step, the bias rules' z-tests, the minimum-sample and label-coverage
guards, the "inside the threshold: not tested" short cut) and, for `fdr` rules,
monitor.incidents.decide.control_false_discoveries (Benjamini–Hochberg over every finding of the
rule in the tick), on window sums (M × F) instead of one VersionWindows at a time:
tests/unit/test_bench_detectors.py checks them against those functions. The formulas are those of
monitor/stats.py; scipy.stats does every distribution.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import stats

from bench._detsim import LAT_BUCKETS, History, Layout
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
    flag_field,
)
from monitor.rules.schema import Fairness, Rule

Array = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
_UPPER = np.array([histogram.upper_bound_ms(int(i)) for i in LAT_BUCKETS])
_REPR = np.array([histogram.representative_ms(int(i)) for i in LAT_BUCKETS])
# latency_above counts bucket i when upper_bound_ms(i − 1) ≥ the limit (and i > 0)
_LOWER = np.array([histogram.upper_bound_ms(int(i) - 1) if i > 0 else -np.inf for i in LAT_BUCKETS])


def _col(layout: Layout, sums: Array, name: str) -> Array:
    return sums[:, layout.col[name]]


def _steps(rule: Rule, published: float | None = None) -> list[float]:
    return [s.threshold for s in rule.steps(published)]


def _top(sig: list[Bools]) -> npt.NDArray[np.int64]:
    """The strongest significant step (ladders rise in level), 0 where none."""
    top = np.zeros(sig[0].shape, dtype=np.int64)
    for s, hit in enumerate(sig):
        top = np.where(hit, s, top)
    return top


def _binom_above(k: Array, n: Array, p0: float, alpha: float) -> Bools:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(stats.binom.sf(k - 1, n, min(max(p0, 0.0), 1.0)) < alpha)


def _binom_below(k: Array, n: Array, p0: Array | float, alpha: float) -> Bools:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(stats.binom.cdf(k, n, np.clip(p0, 0.0, 1.0)) < alpha)


def old_rate(
    rule: Rule, layout: Layout, history: History, published: Array | None = None
) -> tuple[Bools, Array]:
    """(fired, strongest step) per model of an error, flag, accuracy or latency rule."""
    cur = history.window(rule.window_s)
    alpha = 1.0 - rule.confidence
    metric = rule.metric
    if metric in ("error_rate", "flag_rate"):
        k = _col(layout, cur, ERRORS if metric == "error_rate" else flag_field(rule.flag or ""))
        n = _col(layout, cur, COUNT)
        steps = _steps(rule)
        valid = n >= rule.min_samples
        rate = k / np.maximum(n, 1)
        outside = valid & (rate > steps[0])
        sig = [outside & _binom_above(k, n, t, alpha) for t in steps]
        return sig[0], _top(sig).astype(float)
    if metric == "accuracy":
        n, k = _col(layout, cur, LABELLED), _col(layout, cur, CORRECT)
        answered = _col(layout, cur, COUNT) - _col(layout, cur, ERRORS)
        coverage = np.where(answered > 0, np.minimum(1.0, n / np.maximum(answered, 1)), 0.0)
        valid = (n >= rule.min_samples) & (coverage >= (rule.min_label_coverage or 0.0))
        acc = k / np.maximum(n, 1)
        if rule.compare == "relative_drop":
            ref = history.baseline(rule)
            assert ref is not None
            bn, bk = _col(layout, ref, LABELLED), _col(layout, ref, CORRECT)
            valid &= (bn >= rule.min_samples) & (bk > 0)
            base = bk / np.maximum(bn, 1)
            drop = (base - acc) / np.where(base > 0, base, 1.0)
            steps = _steps(rule)
            outside = valid & (drop > steps[0])
            sig = [outside & _binom_below(k, n, base * (1 - t), alpha) for t in steps]
            return sig[0], _top(sig).astype(float)
        assert published is not None
        valid &= np.isfinite(published)
        outside = valid & (acc < published)
        sig = [outside & _binom_below(k, n, np.nan_to_num(published), alpha)]
        return sig[0], _top(sig).astype(float)
    if metric == "latency":
        return _old_latency(rule, layout, history)
    raise AssertionError(f"no vectorised test for {metric}")


def _quantile_ms(counts: Array, q: float) -> Array:
    n = counts.sum(axis=1)
    rank = np.ceil(q * n)
    index = np.argmax(np.cumsum(counts, axis=1) >= rank[:, None], axis=1)
    return np.where(n > 0, _REPR[index], np.nan)


def _old_latency(rule: Rule, layout: Layout, history: History) -> tuple[Bools, Array]:
    assert rule.quantile is not None and rule.compare == "ratio_above"
    q, t = rule.quantile, _steps(rule)[0]
    cur = history.window(rule.window_s)[:, layout.lat_cols]
    ref = history.reference()[:, layout.lat_cols]
    n, bn = cur.sum(axis=1), ref.sum(axis=1)
    value, base = _quantile_ms(cur, q), _quantile_ms(ref, q)
    valid = (n >= rule.min_samples) & (bn >= rule.min_samples) & (base > 0)
    outside = valid & (value / np.where(valid, base, 1.0) > t)
    limit = t * np.nan_to_num(base)
    above = np.where(_LOWER[None, :] >= limit[:, None], cur, 0.0).sum(axis=1)
    fired = outside & _binom_above(above, n, 1.0 - q, 1.0 - rule.confidence)
    return fired, np.zeros(len(n))


def _bh(p: Array, alpha: float) -> Bools:
    """Benjamini–Hochberg over one family (NaN: no finding); p of 1 never fires."""
    live = np.isfinite(p)
    out = np.zeros(p.shape, dtype=bool)
    if live.any():
        adjusted = stats.false_discovery_control(p[live], method="bh")
        out[live] = (adjusted < alpha) & (p[live] < 1.0)
    return out


def old_bias(rule: Rule, layout: Layout, history: History, fairness: Fairness) -> tuple[Bools, Array]:
    """(fired, 0) per model × group value (layout.groups) of a bias rule, BH applied when `fdr`."""
    cur = history.window(rule.window_s)
    ref = history.baseline(rule)
    alpha = 1.0 - rule.confidence
    t = _steps(rule)[0]
    m = cur.shape[0]
    p = np.full((m, len(layout.groups)), np.nan)  # NaN: no finding for that group
    sig = np.zeros(p.shape, dtype=bool)
    for attr, _ in fairness.attributes(rule.attributes):
        values = layout.attrs.get(attr, ())
        idx = [layout.group_index(attr, v) for v in values]
        if len(idx) < 2:
            continue

        def g(stat: str, sums: np.ndarray = cur, idx: list[int] = idx) -> Array:
            return np.stack([sums[:, layout.group_cols[i, _STAT[stat]]] for i in idx], axis=1)

        if rule.metric == "disparate_impact":
            ps, sg = _impact(g(DECISIONS), g(FAVOURABLE), rule, t, alpha)
        elif rule.metric == "fnr_gap":
            ps, sg = _fnr(g(ACTUAL_POSITIVE), g(FALSE_NEGATIVE), rule, t, alpha)
        else:
            assert ref is not None
            ps, sg = _shift(
                g(DECISIONS), g(FAVOURABLE), g(DECISIONS, ref), g(FAVOURABLE, ref), rule, t, alpha
            )
        p[:, idx], sig[:, idx] = ps, sg
    if rule.fdr:
        sig &= _bh(p.reshape(-1), alpha).reshape(p.shape)
    return sig, np.zeros(p.shape)


_STAT = {
    s: i
    for i, s in enumerate(
        (COUNT, ERRORS, DECISIONS, FAVOURABLE, LABELLED, CORRECT, ACTUAL_POSITIVE, FALSE_NEGATIVE)
    )
}


def _clip(p: Array, n: Array) -> Array:
    floor = 0.5 / np.maximum(n, 1)
    return np.minimum(np.maximum(p, floor), 1 - floor)


def _impact(dec: Array, fav: Array, rule: Rule, t: float, alpha: float) -> tuple[Array, Bools]:
    sized = dec >= rule.min_samples
    rate = np.where(dec > 0, fav / np.maximum(dec, 1), 0.0)
    ranked = np.where(sized, rate, -np.inf)
    ref = np.argmax(ranked, axis=1)  # the first most favoured group, as max() over the dict
    rows = np.arange(len(dec))
    ok = (sized.sum(axis=1) >= 2) & (fav[rows, ref] > 0)
    p2, n2 = rate[rows, ref][:, None], dec[rows, ref][:, None]
    finding = sized & ok[:, None] & (np.arange(dec.shape[1])[None, :] != ref[:, None])
    ratio = rate / np.where(p2 > 0, p2, 1.0)
    q1, q2 = _clip(rate, dec), _clip(p2, n2)
    se = np.sqrt(q1 * (1 - q1) / np.maximum(dec, 1) + t**2 * q2 * (1 - q2) / np.maximum(n2, 1))
    p = stats.norm.cdf((rate - t * p2) / se)
    p = np.where(ratio >= t, 1.0, p)  # inside: not tested, p recorded as 1
    return np.where(finding, p, np.nan), finding & (p < alpha)


def _fnr(apos: Array, fn: Array, rule: Rule, t: float, alpha: float) -> tuple[Array, Bools]:
    sized = apos >= rule.min_samples
    rate = np.where(apos > 0, fn / np.maximum(apos, 1), 0.0)
    ref = np.argmin(np.where(sized, rate, np.inf), axis=1)
    rows = np.arange(len(apos))
    ok = sized.sum(axis=1) >= 2
    p2, n2 = rate[rows, ref][:, None], apos[rows, ref][:, None]
    finding = sized & ok[:, None] & (np.arange(apos.shape[1])[None, :] != ref[:, None])
    gap = rate - p2
    c1, c2 = _clip(rate, apos), _clip(p2, n2)
    se = np.sqrt(c1 * (1 - c1) / np.maximum(apos, 1) + c2 * (1 - c2) / np.maximum(n2, 1))
    p = np.minimum(1.0, stats.norm.sf((gap - t) / se))
    p = np.where(gap <= t, 1.0, p)
    return np.where(finding, p, np.nan), finding & (p < alpha)


def _shift(
    dec: Array, fav: Array, rdec: Array, rfav: Array, rule: Rule, t: float, alpha: float
) -> tuple[Array, Bools]:
    sized = (dec >= rule.min_samples) & (rdec >= rule.min_samples)
    ok = sized.sum(axis=1) >= 2
    w = sized.astype(float)
    on, od = (fav * w).sum(axis=1, keepdims=True) - fav, (dec * w).sum(axis=1, keepdims=True) - dec
    rn, rd = (rfav * w).sum(axis=1, keepdims=True) - rfav, (rdec * w).sum(axis=1, keepdims=True) - rdec
    safe = lambda k, n: k / np.maximum(n, 1)  # noqa: E731
    parts = [(safe(fav, dec), dec), (safe(rfav, rdec), rdec), (safe(on, od), od), (safe(rn, rd), rd)]
    d = (parts[0][0] - parts[1][0]) - (parts[2][0] - parts[3][0])
    se = np.sqrt(sum(_clip(r, n) * (1 - _clip(r, n)) / np.maximum(n, 1) for r, n in parts))
    p = stats.norm.sf((np.abs(d) - t) / se)
    p = np.where(np.abs(d) <= t, 1.0, p)
    finding = sized & ok[:, None]
    return np.where(finding, p, np.nan), finding & (p < alpha)
